"""Health: checks with honest statuses, the monitor that runs them, the system state."""
