//! The `email` action: a plain-text e-mail rendered from templates, sent through the worker's
//! SMTP server.

use serde::{Deserialize, Serialize};

use super::{validate_template, ActionError, MAX_RECIPIENTS};

/// `{"type": "email", "to": ["ops@example.com"], "subject": "...", "body": "..."}`: a plain-text
/// e-mail sent through the worker's SMTP server (`[smtp]` in its configuration). `subject`,
/// `body` and each recipient are templates (`"{{ new.email }}"` mails the row's address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailAction {
    /// Recipients: addresses (`a@b.c` or `Name <a@b.c>`) or templates rendering to one.
    pub to: Vec<String>,
    /// Sender; default the worker's `smtp.from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Subject template (rendered to one line).
    pub subject: String,
    /// Body template (plain text).
    pub body: String,
}

impl EmailAction {
    pub(super) fn validate(&self) -> Result<(), ActionError> {
        if self.to.is_empty() || self.to.len() > MAX_RECIPIENTS {
            return Err(ActionError::BadRecipients(self.to.len()));
        }
        for (i, to) in self.to.iter().enumerate() {
            let field = format!("to[{i}]");
            if is_template(to) {
                validate_template(&field, to)?;
            } else if !looks_like_mailbox(to) {
                return Err(ActionError::BadAddress {
                    field,
                    address: to.clone(),
                });
            }
        }
        if let Some(from) = &self.from {
            if !looks_like_mailbox(from) {
                return Err(ActionError::BadAddress {
                    field: "from".to_string(),
                    address: from.clone(),
                });
            }
        }
        validate_template("subject", &self.subject)?;
        validate_template("body", &self.body)
    }
}

/// Whether a recipient entry is a template (rendered per job) rather than an address.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// `local@domain` or `Display Name <local@domain>`: the syntax check done at `observer_create`
/// (the worker's mail library parses fully before sending). No spaces, commas, controls or
/// angle brackets inside the address; one `@` with text on both sides and a dot-free or dotted
/// domain.
pub fn looks_like_mailbox(s: &str) -> bool {
    let s = s.trim();
    let addr = match (s.rfind('<'), s.ends_with('>')) {
        (Some(i), true) => &s[i + 1..s.len() - 1],
        (None, false) => s,
        _ => return false,
    };
    if s.chars().any(|c| c.is_control()) {
        return false;
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && addr
            .chars()
            .all(|c| !c.is_whitespace() && !matches!(c, ',' | '<' | '>' | ';' | '"'))
        && !domain.contains('@')
}
