"""The scheduler: the loop that admits, orders and dispatches every job's tasks onto Ray, the
cluster's capacity, the warm render slots, fair share, and the job kinds (:mod:`.kinds`)."""
