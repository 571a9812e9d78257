"""Jinja2 templates for bundle files (runners, READMEs, engine build kits, reports, playbooks)."""
