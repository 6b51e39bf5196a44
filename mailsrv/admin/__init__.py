"""The `mailsrv` admin command."""
