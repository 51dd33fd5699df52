"""Status events (withdrawal, loss to follow-up, ...) and protocol deviations."""
