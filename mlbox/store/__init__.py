"""L1 storage: SQLite (WAL, atomic(), migrations), audit chain, Parquet via DuckDB, backups."""
