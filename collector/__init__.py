"""The Upmetr Audit collector: OTLP receivers → processors → ClickHouse exporter."""
