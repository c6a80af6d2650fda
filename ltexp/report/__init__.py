"""Reports: tables and figures built from tracked results."""
