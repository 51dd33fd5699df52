"""The trial as a whole, in one row: the lock in force (every writer checks it), whether
randomization has opened and whether the trial is unblinded. Low in the house because every
writer and every blinding decision reads it."""
