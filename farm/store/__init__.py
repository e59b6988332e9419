"""The store (SQLAlchemy; SQLite by default, PostgreSQL by URL): its tables and migrations, the
one state machine for jobs and tasks, the ledger, new jobs, uploaded scenes and read queries."""
