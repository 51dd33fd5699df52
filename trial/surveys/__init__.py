"""Parents' surveys: an instrument the parents answer (``respondent = "parent"``) sent to the
family as a link (e-mail through the outbox, or a printed QR code); the parent's answers become the
visit's assessment with the provenance "parent (survey)". The link's token is single use, expires
when the visit's window closes, and leads to nothing else of the trial."""
