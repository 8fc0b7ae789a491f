"""The database as the timer: publishing tasks by name, dispatching steps that come due,
reconciling lost work, and failing over a dead worker's holds."""
