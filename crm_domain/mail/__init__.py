"""Outgoing e-mail: building messages from templates (`render`) and handing them to an SMTP
server or, when none is configured, to a folder and the log (`transport`). What to send and
when is decided by crm_domain.services.mailing.outbound_email."""
