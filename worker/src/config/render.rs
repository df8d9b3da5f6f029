//! The effective configuration as `validate-config` prints it: every layer merged, the defaults
//! filled in, every credential masked ([`Config::redacted`]), as TOML (a file that loads back as
//! the same configuration when it holds no credential) or as JSON (`--json`).

use super::{Config, ConfigError};

/// How [`Config::render`] writes the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A TOML document in the shape of `config.default.toml`.
    Toml,
    /// One pretty-printed JSON object with the same keys.
    Json,
}

impl Config {
    /// The configuration with every credential masked, as `format`.
    pub fn render(&self, format: Format) -> Result<String, ConfigError> {
        serialize(&self.redacted(), format)
    }
}

/// `config` as it is (nothing masked here), as `format`.
fn serialize(config: &Config, format: Format) -> Result<String, ConfigError> {
    match format {
        Format::Toml => toml::to_string_pretty(config).map_err(|e| ConfigError::Render {
            format: "TOML",
            message: e.to_string(),
        }),
        Format::Json => serde_json::to_string_pretty(config)
            .map(|mut text| {
                text.push('\n');
                text
            })
            .map_err(|e| ConfigError::Render {
                format: "JSON",
                message: e.to_string(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "fo-config-render-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    /// A configuration with a credential in every place one can be.
    fn with_credentials() -> Config {
        Config::load(
            None,
            env(&[
                (
                    "FRAISEQL_OBSERVERS_DATABASE_URL",
                    "postgres://w:DbPw_4411@db/app",
                ),
                (
                    "FRAISEQL_OBSERVERS_SMTP__URL",
                    "smtp://u:SmtpPw_4412@mail:25",
                ),
                (
                    "FRAISEQL_OBSERVERS_REDIS__URL",
                    "redis://:RedisPw_4413@cache:6379/0",
                ),
                (
                    "FRAISEQL_OBSERVERS_ELASTICSEARCH__URL",
                    "https://e:EsPw_4414@es:9200",
                ),
                ("FRAISEQL_OBSERVERS_ELASTICSEARCH__API_KEY", "EsKey_4415"),
                ("FRAISEQL_OBSERVERS_SECRETS__ORDERS", KEY),
                (
                    "FRAISEQL_OBSERVERS_SECRETS__ORDERS__DESTINATIONS",
                    "https://o.example/hooks",
                ),
                ("FRAISEQL_OBSERVERS_SECRETS__STRIPE__VALUE", "sk_live_4416"),
                (
                    "FRAISEQL_OBSERVERS_RATE_LIMITS",
                    "https://api.example.com=50",
                ),
                ("FRAISEQL_OBSERVERS_HTTP__ALLOW_NETWORKS", "127.0.0.0/8"),
                ("FRAISEQL_OBSERVERS_LOG__FORMAT", "json"),
            ]),
            &[],
        )
        .expect("valid")
    }

    #[test]
    fn the_output_carries_no_credential() {
        let config = with_credentials();
        for format in [Format::Toml, Format::Json] {
            let text = config.render(format).expect("render");
            for value in [
                "DbPw_4411",
                "SmtpPw_4412",
                "RedisPw_4413",
                "EsPw_4414",
                "EsKey_4415",
                "MfKQ9r8G",
                "sk_live_4416",
            ] {
                assert!(!text.contains(value), "{format:?} shows {value}:\n{text}");
            }
            for shown in [
                "https://o.example/hooks",
                "whsec_***",
                "https://api.example.com:443",
            ] {
                assert!(text.contains(shown), "{format:?} hides {shown}:\n{text}");
            }
        }
    }

    /// The printed TOML is the configuration: loaded back it is the same, field for field
    /// (rendered unmasked here; masked, one without credentials round-trips as printed).
    #[test]
    fn the_toml_printed_loads_back_as_the_same_config() {
        let file = dir().join("round-trip.toml");
        let config = with_credentials();
        std::fs::write(&file, serialize(&config, Format::Toml).expect("render")).expect("write");
        let loaded = Config::load(Some(&file), env(&[]), &[]).expect("loads back");
        assert_eq!(loaded, config);

        let plain = Config::load(
            None,
            env(&[
                ("FRAISEQL_OBSERVERS_BATCH_SIZE", "7"),
                ("FRAISEQL_OBSERVERS_DISPATCH", "off"),
            ]),
            &[],
        )
        .expect("valid");
        std::fs::write(&file, plain.render(Format::Toml).expect("render")).expect("write");
        let loaded = Config::load(Some(&file), env(&[]), &[]).expect("loads back");
        assert_eq!(loaded, plain);

        let json: serde_json::Value =
            serde_json::from_str(&config.render(Format::Json).expect("render")).expect("JSON");
        assert_eq!(json["batch_size"], 100);
        assert_eq!(json["log"]["format"], "json");
        assert_eq!(json["secrets"]["stripe"]["value"], "***");
    }
}
