"""The superadmin audit page and its JSON API (``upmetr_audit.web``)."""
