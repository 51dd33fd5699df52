"""The weekly digest e-mail: to each site's coordinators and blinded assessors, the visits coming
due in the next seven days and the queries waiting for their answer (visits only: never an arm)."""
