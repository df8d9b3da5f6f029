//! Sign-in and sign-out. `GET /login` shows the form (one field, `token`); `POST /login` with an
//! operator's token opens a session (cookie, then a redirect to `/`); a wrong token, or a post
//! from another site, gets the form again with 401 or 403 and no session. Every page asked for
//! without a session or token answers with this form (401), never with data.

use super::super::auth::{self, COOKIE};
use super::super::html::{esc, Layout};
use super::super::http::{Req, Resp};
use super::super::Console;

/// The sign-in page with `status` and a `note` above the form.
pub fn form(status: u16, note: &str) -> Resp {
    let body = format!(
        "<p class=\"note\" data-testid=\"login-note\">{}</p>\
         <form method=\"post\" action=\"/login\" class=\"login\" data-testid=\"login\">\
         <label for=\"token\">Operator token</label>\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"current-password\" required autofocus>\
         <button type=\"submit\">Sign in</button></form>",
        esc(note)
    );
    let layout = Layout {
        operator: None,
        csrf: "",
        read_only: false,
    };
    Resp::html(status, layout.page("Sign in", "", None, &body))
}

/// `GET /login` and `POST /login`.
pub fn login(console: &Console, req: &Req) -> Resp {
    if !req.is_post() {
        if console.config.loopback_without_token {
            return Resp::redirect("/");
        }
        return form(200, "Sign in with your operator token.");
    }
    if !auth::same_origin(req) {
        return form(
            403,
            "Sign-in refused: the form was posted from another site.",
        );
    }
    match console.config.operator_of(req.field("token")) {
        Some(operator) => {
            tracing::info!(operator, "console sign-in");
            let id = console.sessions.open(operator);
            Resp::redirect("/").with("set-cookie", auth::cookie(&id))
        }
        None => {
            tracing::warn!("console sign-in refused: unknown token");
            form(401, "That token is not an operator's token.")
        }
    }
}

/// `POST /logout` (its CSRF token already checked): end the session.
pub fn logout(console: &Console, req: &Req) -> Resp {
    // The shared session of a console without tokens is not closed (it is everyone's).
    if let Some(id) = req.cookie(COOKIE) {
        console.sessions.close(id);
    }
    Resp::redirect("/login").with("set-cookie", auth::expired_cookie())
}
