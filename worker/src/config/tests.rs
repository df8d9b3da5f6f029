//! Tests of the layers and the checks, through `Config::load` as the worker calls it.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_load_and_validate() {
    let c = Config::load(None, env(&[]), &[]).expect("defaults are valid");
    assert_eq!(c.batch_size, 100);
    assert!(c.dispatch);
    assert_eq!(c.http.user_agent, "fraiseql-observers");
}

#[test]
fn layers_apply_in_order_file_env_flags() {
    let dir = tempdir();
    let file = dir.join("w.toml");
    std::fs::write(
        &file,
        "batch_size = 7\nconcurrency = 9\n[http]\nuser_agent = \"file\"\n",
    )
    .expect("write");
    let c = Config::load(
        Some(&file),
        env(&[
            ("FRAISEQL_OBSERVERS_CONCURRENCY", "11"),
            ("FRAISEQL_OBSERVERS_HTTP__USER_AGENT", "env"),
            ("UNRELATED", "x"),
        ]),
        &[("concurrency".to_string(), toml::Value::Integer(13))],
    )
    .expect("valid");
    assert_eq!(c.batch_size, 7, "file beats defaults");
    assert_eq!(c.http.user_agent, "env", "env beats file");
    assert_eq!(c.concurrency, 13, "flags beat env");
}

#[test]
fn errors_name_the_field() {
    let e = Config::load(None, env(&[("FRAISEQL_OBSERVERS_BATCH_SIZE", "0")]), &[])
        .expect_err("0 is out of range");
    assert!(e.to_string().contains("`batch_size`"), "{e}");
    let e = Config::load(None, env(&[("FRAISEQL_OBSERVERS_BATCH_SIZE", "many")]), &[])
        .expect_err("not a number");
    assert!(
        e.to_string().contains("FRAISEQL_OBSERVERS_BATCH_SIZE"),
        "{e}"
    );
    let e =
        Config::load(None, env(&[("FRAISEQL_OBSERVERS_NOPE", "1")]), &[]).expect_err("unknown key");
    assert!(e.to_string().contains("no such setting"), "{e}");
    let e = Config::load(None, env(&[("FRAISEQL_OBSERVERS_LOG__FORMAT", "xml")]), &[])
        .expect_err("bad enum");
    assert!(e.to_string().contains("`log.format`"), "{e}");
}

#[test]
fn unknown_keys_in_a_file_are_refused() {
    let dir = tempdir();
    let file = dir.join("w.toml");
    std::fs::write(&file, "bach_size = 7\n").expect("write");
    let e = Config::load(Some(&file), env(&[]), &[]).expect_err("typo");
    assert!(e.to_string().contains("bach_size"), "{e}");
}

/// A value of the wrong type in a file is refused naming its key, and without quoting the
/// value (it may be a secret written in the wrong place).
#[test]
fn wrong_types_in_a_file_name_their_key_and_not_their_value() {
    let dir = tempdir();
    let file = dir.join("w.toml");
    std::fs::write(
        &file,
        "[http]\nmax_in_flight_per_endpoint = \"hunter2-secret\"\n",
    )
    .expect("write");
    let e = Config::load(Some(&file), env(&[]), &[]).expect_err("a string for a number");
    let text = e.to_string();
    assert_eq!(
        text,
        "invalid configuration: `http.max_in_flight_per_endpoint`: invalid type: string, expected u32"
    );
    std::fs::write(&file, "[http]\ntimeout_ms = 5\n").expect("write");
    let e = Config::load(Some(&file), env(&[]), &[]).expect_err("unknown key");
    assert!(
        e.to_string()
            .contains("`http.timeout_ms`: unknown field `timeout_ms`"),
        "{e}"
    );
    assert_eq!(unquoted("a \"b\" c \"d"), "a c");
}

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Regression (review F08): a secret signed for whatever URL an action named. Now each one
/// lists its destinations, and one with none is refused at start-up.
#[test]
fn secrets_are_bound_to_destinations() {
    let dir = tempdir();
    let file = dir.join("secrets.toml");
    std::fs::write(
        &file,
        format!("[secrets.Orders]\nkeys = [\"{KEY}\"]\ndestinations = [\"https://hooks.example.com/orders\"]\n"),
    )
    .expect("write");
    let c = Config::load(Some(&file), env(&[]), &[]).expect("valid");
    let orders = c.secret("ORDERS").expect("configured");
    assert!(orders.may_sign_for("https://hooks.example.com/orders/paid"));
    assert!(!orders.may_sign_for("https://attacker.example/collect"));
    assert_eq!(c.signing_keys("orders").map(|k| k.len()), Some(1));

    // The environment form: the keys, then the destinations.
    let c = Config::load(
        None,
        env(&[
            (
                "FRAISEQL_OBSERVERS_SECRETS__BILLING",
                &format!("{KEY},{KEY}"),
            ),
            (
                "FRAISEQL_OBSERVERS_SECRETS__BILLING__DESTINATIONS",
                "https://a.example/x http://127.0.0.1:9000",
            ),
        ]),
        &[],
    )
    .expect("valid");
    let billing = c.secret("billing").expect("configured");
    assert_eq!(billing.keys.len(), 2);
    assert!(billing.may_sign_for("http://127.0.0.1:9000/hook"));

    // Safe default: no destination, no start.
    let e = Config::load(
        None,
        env(&[("FRAISEQL_OBSERVERS_SECRETS__ORDERS", KEY)]),
        &[],
    )
    .expect_err("no destination");
    let text = e.to_string();
    assert!(text.contains("`secrets.orders`"), "{text}");
    assert!(text.contains("bound to no destination"), "{text}");
    assert!(
        text.contains("FRAISEQL_OBSERVERS_SECRETS__ORDERS__DESTINATIONS"),
        "{text}"
    );
    assert!(!text.contains(KEY), "{text}");

    // The former list form is refused with the fix.
    std::fs::write(&file, format!("[secrets]\norders = [\"{KEY}\"]\n")).expect("write");
    let e = Config::load(Some(&file), env(&[]), &[]).expect_err("list form");
    let text = e.to_string();
    assert!(text.contains("[secrets.orders]"), "{text}");
    assert!(!text.contains(KEY), "{text}");

    let e = Config::load(
        None,
        env(&[
            ("FRAISEQL_OBSERVERS_SECRETS__ORDERS", KEY),
            (
                "FRAISEQL_OBSERVERS_SECRETS__ORDERS__DESTINATIONS",
                "https://u:hunter22@a.example/",
            ),
        ]),
        &[],
    )
    .expect_err("credentials in a destination");
    assert!(!e.to_string().contains("hunter22"), "{e}");
}

/// Regression (review F17): a secret written as a string was echoed by serde's message
/// (`invalid type: string "whsec_..."`).
#[test]
fn a_secret_of_the_wrong_type_is_not_echoed() {
    let dir = tempdir();
    let file = dir.join("wrong-type.toml");
    for body in [
        format!("[secrets]\norders = \"{KEY}\"\n"),
        format!("[secrets.orders]\nkeys = \"{KEY}\"\ndestinations = [\"https://a.example\"]\n"),
        format!("[secrets.orders]\nkeys = [\"{KEY}\", 3]\ndestinations = [\"https://a.example\"]\n"),
        format!("secrets = \"{KEY}\"\n"),
        "[secrets.orders]\nkeys = [\"whsec_c2VjcmV0LXRvby1zaG9ydA==\"]\ndestinations = [\"https://a.example\"]\n".to_string(),
    ] {
        std::fs::write(&file, &body).expect("write");
        let e = Config::load(Some(&file), env(&[]), &[]).expect_err("wrong type");
        let text = e.to_string();
        assert!(text.contains("secrets"), "{text}");
        assert!(!text.contains("MfKQ9r8G"), "{body}: {text}");
        assert!(!text.contains("c2VjcmV0"), "{body}: {text}");
    }
}

/// A configuration with credentials from every source: inline, the environment, `value_file`,
/// `*_FILE` (trailing `\n` and `\r\n`), and a `value_file` the environment replaces.
fn credentials_from_every_source() -> Config {
    let dir = tempdir();
    let token = dir.join("stripe-token");
    std::fs::write(&token, "sk_test_from_file\n").expect("write");
    let crlf = dir.join("crlf");
    std::fs::write(&crlf, "tok_crlf\r\n").expect("write");
    let keys = dir.join("orders-keys");
    std::fs::write(&keys, format!("{KEY}\n")).expect("write");
    let db = dir.join("database-url");
    std::fs::write(&db, "postgres://w:pw@db/app\n").expect("write");
    let file = dir.join("credentials.toml");
    std::fs::write(
        &file,
        format!(
            "[secrets.inline]\nvalue = \"Bearer-less token\"\ndestinations = [\"https://api.example.com\"]\n\
             [secrets.stripe]\nvalue_file = \"{}\"\ndestinations = [\"https://api.stripe.com/v1\"]\n\
             [secrets.overridden]\nvalue_file = \"/nonexistent/overridden\"\n",
            token.display()
        ),
    )
    .expect("write");
    let crlf_path = crlf.display().to_string();
    let keys_path = keys.display().to_string();
    let db_path = db.display().to_string();
    Config::load(
        Some(&file),
        env(&[
            (
                "FRAISEQL_OBSERVERS_SECRETS__SLACK_OPS__VALUE",
                "https://hooks.slack.com/services/T/B/x",
            ),
            ("FRAISEQL_OBSERVERS_SECRETS__CRLF__VALUE_FILE", &crlf_path),
            ("FRAISEQL_OBSERVERS_SECRETS__ORDERS_FILE", &keys_path),
            (
                "FRAISEQL_OBSERVERS_SECRETS__ORDERS__DESTINATIONS",
                "https://orders.example.com",
            ),
            // The environment layer replaces the file's value_file (never read).
            ("FRAISEQL_OBSERVERS_SECRETS__OVERRIDDEN__VALUE", "from env"),
            ("FRAISEQL_OBSERVERS_DATABASE_URL_FILE", &db_path),
        ]),
        &[],
    )
    .expect("valid")
}

/// Credentials (`value`) referenced by actions come inline, from the environment, or from
/// files (`value_file`, `*_FILE`), the way containers and Kubernetes pass secrets.
#[test]
fn credentials_come_inline_from_the_environment_or_from_files() {
    let c = credentials_from_every_source();
    let value = |name: &str| c.secret(name).and_then(|s| s.value.clone());
    assert_eq!(value("inline").as_deref(), Some("Bearer-less token"));
    assert_eq!(
        value("stripe").as_deref(),
        Some("sk_test_from_file"),
        "trailing newline trimmed"
    );
    assert_eq!(value("crlf").as_deref(), Some("tok_crlf"));
    assert_eq!(
        value("slack_ops").as_deref(),
        Some("https://hooks.slack.com/services/T/B/x")
    );
    assert_eq!(value("overridden").as_deref(), Some("from env"));
    assert!(c
        .secret("stripe")
        .expect("stripe")
        .covers("https://api.stripe.com/v1/charges"));
    assert!(
        c.secret("slack_ops")
            .expect("slack")
            .destinations
            .is_empty(),
        "a URL needs none"
    );
    assert_eq!(
        c.signing_keys("orders").map(|k| k.len()),
        Some(1),
        "keys from a file"
    );
    assert_eq!(c.signing_keys("stripe"), None, "a credential never signs");
    assert_eq!(
        c.database_url, "postgres://w:pw@db/app",
        "any setting has a _FILE form"
    );
}

/// Never printed: not by `Debug`, nor by `validate-config` (the redacted configuration, as TOML
/// or JSON).
#[test]
fn credentials_are_never_printed() {
    let c = credentials_from_every_source();
    let rendered = [Format::Toml, Format::Json].map(|f| c.render(f).expect("render"));
    for printed in [format!("{:#?}", c.redacted()), format!("{c:?}")]
        .into_iter()
        .chain(rendered)
    {
        for value in [
            "sk_test_from_file",
            "Bearer-less",
            "hooks.slack.com",
            "tok_crlf",
            "from env",
            "MfKQ9r8G",
        ] {
            assert!(!printed.contains(value), "{value} in {printed}");
        }
    }
}

/// A secret file that cannot be read stops the worker at start, naming the path; a value
/// given twice, or both kinds of secret at once, is refused too, never quoting a value.
#[test]
fn unreadable_or_ambiguous_secrets_stop_the_start() {
    let dir = tempdir();
    let e = Config::load(
        None,
        env(&[(
            "FRAISEQL_OBSERVERS_SECRETS__STRIPE__VALUE_FILE",
            "/nonexistent/stripe",
        )]),
        &[],
    )
    .expect_err("missing file");
    let text = e.to_string();
    assert!(
        text.contains("FRAISEQL_OBSERVERS_SECRETS__STRIPE__VALUE_FILE"),
        "{text}"
    );
    assert!(text.contains("cannot read /nonexistent/stripe"), "{text}");

    let file = dir.join("missing-file.toml");
    std::fs::write(
        &file,
        "[secrets.stripe]\nvalue_file = \"/nonexistent/stripe\"\n",
    )
    .expect("write");
    let text = Config::load(Some(&file), env(&[]), &[])
        .expect_err("missing")
        .to_string();
    assert!(text.contains("`secrets.stripe`"), "{text}");
    assert!(
        text.contains("cannot read `value_file` /nonexistent/stripe"),
        "{text}"
    );

    let token = dir.join("token");
    std::fs::write(&token, "sk_live_twice").expect("write");
    let path = token.display().to_string();
    let text = Config::load(
        None,
        env(&[
            ("FRAISEQL_OBSERVERS_SECRETS__STRIPE__VALUE", "sk_live_twice"),
            ("FRAISEQL_OBSERVERS_SECRETS__STRIPE__VALUE_FILE", &path),
        ]),
        &[],
    )
    .expect_err("twice")
    .to_string();
    assert!(text.contains("set one of them"), "{text}");
    assert!(!text.contains("sk_live_twice"), "{text}");

    for (body, problem) in [
        (format!("[secrets.s]\nvalue = \"v\"\nvalue_file = \"{path}\"\n"), "both `value_file` and `value`"),
        (format!("[secrets.s]\nvalue = \"sk_live_twice\"\nkeys = [\"{KEY}\"]\ndestinations = [\"https://a.example\"]\n"), "both keys"),
        ("[secrets.s]\nvalue = \"\"\n".to_string(), "its value is empty"),
        ("[secrets.s]\nvalue = \"sk_live_twice\\nX-Evil: 1\"\n".to_string(), "control character"),
        ("[secrets.s]\nvalue = 3\n".to_string(), "`value` must be a string"),
        ("[secrets.s]\ndestinations = [\"https://a.example\"]\n".to_string(), "no key and no value"),
    ] {
        std::fs::write(&file, &body).expect("write");
        let text = Config::load(Some(&file), env(&[]), &[]).expect_err(&body).to_string();
        assert!(text.contains("`secrets.s`"), "{body}: {text}");
        assert!(text.contains(problem), "{body}: {text}");
        assert!(!text.contains("sk_live_twice"), "{body}: {text}");
        assert!(!text.contains("MfKQ9r8G"), "{body}: {text}");
    }
    // A signing key that is not one points to `value` for a credential.
    let text = Config::load(
        None,
        env(&[
            ("FRAISEQL_OBSERVERS_SECRETS__S", "sk_live_twice"),
            (
                "FRAISEQL_OBSERVERS_SECRETS__S__DESTINATIONS",
                "https://a.example",
            ),
        ]),
        &[],
    )
    .expect_err("not whsec")
    .to_string();
    assert!(
        text.contains("FRAISEQL_OBSERVERS_SECRETS__S__VALUE"),
        "{text}"
    );
    assert!(!text.contains("sk_live_twice"), "{text}");
}

/// Regression (review F17): an unparsable database_url was printed as it was, password
/// included.
#[test]
fn an_unparsable_database_url_is_not_echoed() {
    for (url, part) in [
        ("postgres://worker:S3cretPw@db:54x2/app", "`port`"),
        ("host=db password=S3cretPw port=5x", "`port`"),
        ("host=db password='S3cretPw", "not closed"),
        ("host=db S3cretPw", "syntax"),
        ("host=db sslmode=S3cretPw", "`sslmode`"),
    ] {
        let e = Config::load(None, env(&[("FRAISEQL_OBSERVERS_DATABASE_URL", url)]), &[])
            .expect_err("unparsable");
        let text = e.to_string();
        assert!(text.contains("`database_url`"), "{text}");
        assert!(text.contains(part), "{url}: {text}");
        assert!(!text.contains("S3cretPw"), "{url}: {text}");
    }
}

#[test]
fn allowed_senders_are_validated() {
    let c = Config::load(
        None,
        env(&[(
            "FRAISEQL_OBSERVERS_SMTP__ALLOWED_FROM",
            "shop@example.com,@example.org",
        )]),
        &[],
    )
    .expect("valid");
    assert_eq!(c.smtp.allowed_from.len(), 2);
    let e = Config::load(
        None,
        env(&[("FRAISEQL_OBSERVERS_SMTP__ALLOWED_FROM", "example.org")]),
        &[],
    )
    .expect_err("neither");
    assert!(e.to_string().contains("`smtp.allowed_from`"), "{e}");
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "fo-config-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}
