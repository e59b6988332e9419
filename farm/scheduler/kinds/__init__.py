"""The job kinds the scheduler runs, one module each, behind the narrow interface of
:mod:`.base`."""
