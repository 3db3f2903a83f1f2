"""Event-triggered batch jobs: a JSONL file in jobs/input/ becomes exactly one result or error per line."""
