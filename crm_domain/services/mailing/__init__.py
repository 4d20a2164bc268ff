"""E-mail: the outbound queue (`outbound_emails`) and what is mailed: invitations (and the
invitations themselves), the weekly report e-mails and the daily task digest. How a message is
rendered and handed to SMTP is crm_domain.mail.

May import crm_domain's core modules, `services._common`, `records` and `delivery`; never
`transfer` or `reporting`."""
