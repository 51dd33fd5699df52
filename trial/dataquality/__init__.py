"""Flags on the child's record that every writer may raise or clear in its own transaction: data
queries (the rows, and the system's automatic checks) and source-verification marks. The users'
workflows on them are in trial.queries and trial.monitoring, higher up."""
