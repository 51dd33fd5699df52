"""Notifications: in-app messages to users, and e-mail through a configured SMTP relay
(TRIAL_SMTP_URL; none = in-app only). No message ever names an arm or a session to a blinded
recipient: the callers write them so."""
