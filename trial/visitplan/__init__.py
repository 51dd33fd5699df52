"""The visit plan: each randomized child's forms at each post-randomization visit, with the
window's days in the site's calendar and whether the form is entered, kept in the writers'
transactions so that the visit worklists are plain indexed reads at any size of trial."""
