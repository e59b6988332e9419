"""Users and what they may do: tokens, roles and access, enrolment, quotas."""
