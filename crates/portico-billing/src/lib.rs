//! `portico-billing` will rate usage into invoices, compute marketplace commission and provider
//! payouts, and talk to payment providers (Stripe). It is empty on purpose until the billing
//! issue: today plans are priced (`portico_core::model::Pricing`) but nothing is invoiced, and
//! nothing here pretends otherwise.
