//! E-mail: over SMTP (`lettre`) when an SMTP server is configured, otherwise written to
//! `<data-dir>/outbox/` as `.eml` files (RFC 5322, openable in any mail client). Sending never
//! blocks the request that caused it: messages go out on a background task and a failure is
//! logged.

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::path::PathBuf;

#[derive(Clone)]
pub enum Mailer {
    Smtp { transport: AsyncSmtpTransport<Tokio1Executor>, from: Mailbox },
    Outbox { dir: PathBuf, from: Mailbox },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailer::Smtp { from, .. } => write!(f, "Mailer::Smtp(from {from})"),
            Mailer::Outbox { dir, .. } => write!(f, "Mailer::Outbox({})", dir.display()),
        }
    }
}

impl Mailer {
    /// `url`: `smtp://[user:pass@]host[:port][?tls=required|opportunistic]` or `smtps://…`;
    /// `None` writes `.eml` files to `outbox`.
    pub fn new(url: Option<&str>, from: &str, outbox: PathBuf) -> Result<Self, String> {
        let from: Mailbox = from.parse().map_err(|e| format!("smtp.from `{from}` is not a mailbox: {e}"))?;
        match url {
            Some(u) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(u)
                    .map_err(|e| format!("smtp.url is not usable ({e}); expected smtp://host:port or smtps://host"))?
                    .timeout(Some(std::time::Duration::from_secs(10)))
                    .build();
                Ok(Mailer::Smtp { transport, from })
            }
            None => Ok(Mailer::Outbox { dir: outbox, from }),
        }
    }

    fn message(&self, to: &str, subject: &str, body: &str) -> Result<Message, String> {
        let from = match self {
            Mailer::Smtp { from, .. } | Mailer::Outbox { from, .. } => from.clone(),
        };
        let to: Mailbox = to.parse().map_err(|e| format!("recipient `{to}`: {e}"))?;
        Message::builder()
            .from(from)
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
            .map_err(|e| e.to_string())
    }

    /// Sends now (awaits the SMTP server or the file write).
    pub async fn send_now(&self, to: &str, subject: &str, body: &str) -> Result<(), String> {
        let msg = self.message(to, subject, body)?;
        match self {
            Mailer::Smtp { transport, .. } => transport.send(msg).await.map(|_| ()).map_err(|e| e.to_string()),
            Mailer::Outbox { dir, .. } => {
                let bytes = msg.formatted();
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir)?;
                    let name = format!("{}.eml", uuid::Uuid::now_v7());
                    let tmp = dir.join(format!(".{name}.tmp"));
                    std::fs::write(&tmp, bytes)?;
                    std::fs::rename(&tmp, dir.join(name))
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("writing to the outbox: {e}"))
            }
        }
    }

    /// Sends in the background; a failure is logged (never with the body: it may hold a link
    /// with a token).
    pub fn send(&self, to: &str, subject: &str, body: String) {
        let (m, to, subject) = (self.clone(), to.to_owned(), subject.to_owned());
        tokio::spawn(async move {
            if let Err(e) = m.send_now(&to, &subject, &body).await {
                tracing::warn!(error = %e, subject = %subject, "an e-mail could not be sent");
            }
        });
    }
}
