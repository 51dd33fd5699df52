"""Consent and the families (issue 28): the consents each child's family gave, by document and
version, with the options chosen; withdrawals of consent and what they still allow; the surveys
parents answer themselves."""
