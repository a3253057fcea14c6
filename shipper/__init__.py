"""Upmetr Audit's base install: the event catalog and the wire contract.

``upmetr_audit.shipper.catalog`` lists every audit action;
``upmetr_audit.shipper.contract`` defines the OTel log record an audit event
is, and the rules it must meet.
"""
