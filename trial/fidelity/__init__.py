"""Treatment fidelity: a seeded, audited, re-derivable sample of each therapist's sessions, rated
on the protocol's fidelity scale by another credentialed therapist."""
