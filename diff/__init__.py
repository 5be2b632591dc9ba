"""The judgement: rules, compare and verdict (pure), workers, report and admin API views."""
