"""The one place SQL lives: tables, engine creation and queries. A leaf package."""
