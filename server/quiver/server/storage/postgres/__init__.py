"""The PostgreSQL storage (``--database postgresql://...``): the same rows as the SQLite
backend, one repository per aggregate, on a bounded psycopg connection pool."""
