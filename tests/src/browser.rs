//! A real headless Chromium (Debian's `chromium`, driven through Debian's `chromedriver` with the
//! fantoccini WebDriver client) for the console's browser tests, and a tiny page server on another
//! loopback origin for the cross-site attacks.
//!
//! Each [`Browser`] owns its chromedriver (on a free port, in a process group of its own so that
//! dropping it also ends the Chromium processes it started) and a private profile directory, so
//! tests share no cookie. Chromium runs headless with `--no-sandbox` (the tests run as root) at a
//! fixed window of [`WIDTH`] x [`HEIGHT`] with scrollbars hidden, so screenshots of the same page
//! come out the same.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

/// Width of the browser window, in CSS pixels (device scale factor 1).
pub const WIDTH: u32 = 1280;
/// Height of the browser window, in CSS pixels.
pub const HEIGHT: u32 = 900;

/// Share of a screenshot's pixels that may differ from the file already in `docs/console/`
/// before the file is replaced: a timestamp, a port or a chart's last point changes a few
/// thousand pixels of 1.15 million, a changed page many more.
const CHURN_THRESHOLD: f64 = 0.01;

/// A headless Chromium session; its chromedriver and browser processes are killed on drop.
pub struct Browser {
    client: Client,
    log: PathBuf,
    // Dropped before the profile directory, which Chromium writes to until it is killed.
    _driver: Driver,
    _profile: tempfile::TempDir,
}

/// The chromedriver process, leader of its own process group (Chromium's processes join it);
/// the whole group is killed on drop.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

impl Browser {
    /// Start chromedriver on a free port and open a Chromium session with a fresh profile.
    pub async fn start() -> Result<Self> {
        let profile = tempfile::Builder::new()
            .prefix("fo-chromium-")
            .tempdir()
            .context("create the browser profile directory")?;
        let port = crate::free_port()?;
        let log = profile.path().join("chromedriver.log");
        let driver = Driver(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group: Drop kills the group, Chromium's processes included.
                .process_group(0)
                .spawn()
                .context(
                    "cannot start chromedriver (Debian's chromium-driver, scripts/setup.sh)",
                )?,
        );
        let client = Self::connect(port, &profile.path().join("profile")).await?;
        let browser = Browser {
            client,
            log,
            _driver: driver,
            _profile: profile,
        };
        browser.client.set_window_size(WIDTH, HEIGHT).await?;
        browser.fit_viewport().await?;
        Ok(browser)
    }

    /// Wait until chromedriver answers, then open a session.
    async fn connect(port: u16, profile: &Path) -> Result<Client> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !driver_ready(port) {
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on port {port} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = [
            "--headless=new".to_string(),
            // The tests run as root, where Chromium's sandbox cannot start.
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            format!("--window-size={WIDTH},{HEIGHT}"),
            "--force-device-scale-factor=1".to_string(),
            "--hide-scrollbars".to_string(),
            "--font-render-hinting=none".to_string(),
            // No traffic beyond the pages the test opens (the machine has no network anyway).
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--no-first-run".to_string(),
            "--no-default-browser-check".to_string(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"binary": "/usr/bin/chromium", "args": args}),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .context("open a Chromium session through chromedriver")
    }

    /// Make the page's viewport exactly [`WIDTH`] x [`HEIGHT`]: the window size counts the
    /// window's frame, which headless Chromium may or may not draw.
    async fn fit_viewport(&self) -> Result<()> {
        let inner = self
            .client
            .execute("return [window.innerWidth, window.innerHeight];", vec![])
            .await?;
        let w = inner[0].as_u64().unwrap_or(u64::from(WIDTH)) as u32;
        let h = inner[1].as_u64().unwrap_or(u64::from(HEIGHT)) as u32;
        if (w, h) != (WIDTH, HEIGHT) {
            self.client
                .set_window_size(2 * WIDTH - w, 2 * HEIGHT - h)
                .await?;
        }
        Ok(())
    }

    /// The WebDriver client, for what the helpers here do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Open `url` and wait for it to load.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("open {url}"))
    }

    /// The URL the browser shows.
    pub async fn url(&self) -> Result<String> {
        Ok(self.client.current_url().await?.to_string())
    }

    /// The HTTP status of the document the browser shows (the Navigation Timing entry's
    /// `responseStatus`; 0 before anything loaded).
    pub async fn status(&self) -> Result<u16> {
        let v = self
            .client
            .execute(
                "const n = performance.getEntriesByType('navigation')[0];
                 return n ? n.responseStatus : 0;",
                vec![],
            )
            .await?;
        Ok(v.as_u64().unwrap_or(0) as u16)
    }

    /// The page's HTML as the browser holds it now.
    pub async fn source(&self) -> Result<String> {
        Ok(self.client.source().await?)
    }

    /// The visible text of the whole page.
    pub async fn body_text(&self) -> Result<String> {
        self.text("body").await
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> Result<String> {
        let el = self.find(css).await?;
        Ok(el.text().await?)
    }

    /// The visible text of the element with `data-testid` `id`.
    pub async fn testid(&self, id: &str) -> Result<String> {
        self.text(&format!("[data-testid=\"{id}\"]")).await
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> Result<usize> {
        Ok(self.client.find_all(Locator::Css(css)).await?.len())
    }

    /// The visible texts of every element matching `css`, in document order.
    pub async fn texts(&self, css: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for el in self.client.find_all(Locator::Css(css)).await? {
            out.push(el.text().await?);
        }
        Ok(out)
    }

    /// Click the first element matching `css`.
    pub async fn click(&self, css: &str) -> Result<()> {
        let el = self.find(css).await?;
        el.click().await.with_context(|| format!("click {css}"))
    }

    /// Type `value` into the first element matching `css`.
    pub async fn fill(&self, css: &str, value: &str) -> Result<()> {
        let el = self.find(css).await?;
        el.send_keys(value)
            .await
            .with_context(|| format!("type into {css}"))
    }

    /// The text of the element with `data-testid` `id` once the page shows one (at most 10 s):
    /// for the answer to a form, which may still be loading when the click returns.
    pub async fn wait_for_testid(&self, id: &str) -> Result<String> {
        let css = format!("[data-testid=\"{id}\"]");
        let found = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(&css))
            .await;
        match found {
            Ok(el) => Ok(el.text().await?),
            Err(_) => self.text(&css).await,
        }
    }

    /// Poll until the browser's URL satisfies `done` (a form's answer has loaded), at most 10 s.
    pub async fn wait_for_url(&self, done: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.url().await?;
            if done(&url) {
                return Ok(url);
            }
            if Instant::now() > deadline {
                let body = self.body_text().await.unwrap_or_default();
                bail!("the browser stayed on {url}, which shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first element matching `css`; the error names the page and shows its text.
    async fn find(&self, css: &str) -> Result<fantoccini::elements::Element> {
        match self.client.find(Locator::Css(css)).await {
            Ok(el) => Ok(el),
            Err(e) => {
                let url = self.url().await.unwrap_or_default();
                let body = match self.client.find(Locator::Css("body")).await {
                    Ok(b) => b.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                bail!("no element matches {css} on {url} ({e}); the page shows:\n{body}")
            }
        }
    }

    /// Screenshot of the viewport into `docs/console/<name>.png` (see [`save_screenshot`]).
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self
            .client
            .screenshot()
            .await
            .context("take a screenshot")?;
        let path = crate::workspace_root()
            .join("docs/console")
            .join(format!("{name}.png"));
        save_screenshot(&path, &png)?;
        Ok(path)
    }

    /// chromedriver's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// End the session (Chromium exits); the driver is killed on drop.
    pub async fn quit(self) -> Result<()> {
        self.client.clone().close().await?;
        Ok(())
    }
}

/// Whether chromedriver on `port` answers its `/status` with 200 (it speaks HTTP/1.1 only, and
/// keeps the connection open after its answer: the status line is enough).
fn driver_ready(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut head = [0u8; 12];
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut head).is_ok()
        && &head == b"HTTP/1.1 200"
}

/// Write `png` to `path` unless the file there already shows the same page: same size and fewer
/// than [`CHURN_THRESHOLD`] of its pixels different (a timestamp or a port changed), so that a
/// test run does not rewrite every screenshot in the work tree for nothing. A missing, unreadable
/// or visibly different file is replaced.
pub fn save_screenshot(path: &Path, png: &[u8]) -> Result<()> {
    let new = decode(png).context("the screenshot is not a PNG")?;
    if let Ok(old) = std::fs::read(path) {
        if let Ok(old) = decode(&old) {
            if old.0 == new.0 && old.1 == new.1 && differing_share(&old.2, &new.2) < CHURN_THRESHOLD
            {
                return Ok(());
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
}

/// Width, height and RGBA pixels of a PNG.
fn decode(png: &[u8]) -> Result<(u32, u32, Vec<u8>)> {
    let mut decoder = png::Decoder::new(png);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::ALPHA);
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    buf.truncate(info.buffer_size());
    Ok((info.width, info.height, buf))
}

/// Share of 4-byte pixels that differ between two buffers of the same size.
fn differing_share(a: &[u8], b: &[u8]) -> f64 {
    let pixels = a.len() / 4;
    if pixels == 0 || a.len() != b.len() {
        return 1.0;
    }
    let differing = a
        .chunks_exact(4)
        .zip(b.chunks_exact(4))
        .filter(|(x, y)| x != y)
        .count();
    differing as f64 / pixels as f64
}

/// Serve `html` to every request on `ip` (a loopback address) and a free port, from a thread that
/// lives as long as the test process: another origin than the console's, for cross-site pages.
pub fn serve_html(ip: &str, html: String) -> Result<SocketAddr> {
    let listener = TcpListener::bind((ip, 0)).with_context(|| format!("bind {ip}:0"))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            // Read the request head; the answer does not depend on it.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n")
                && conn.read(&mut byte).map(|n| n == 1).unwrap_or(false)
            {
                head.push(byte[0]);
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
        }
    });
    Ok(addr)
}

/// One HTTP/1.0 request to 127.0.0.1:`port` with extra `headers` and a form `body` (sent when
/// not empty, as `application/x-www-form-urlencoded`): the status and the whole response,
/// headers included; (0, "") when nothing answers. For what a browser cannot be made to send.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let _ = stream.write_all(request.as_bytes());
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w` x `h` white RGBA PNG whose first `dark` pixels are black.
    fn png_with(w: u32, h: u32, dark: usize) -> Vec<u8> {
        let mut pixels = vec![255u8; (w * h * 4) as usize];
        for p in pixels.chunks_exact_mut(4).take(dark) {
            p[..3].copy_from_slice(&[0, 0, 0]);
        }
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("header");
        writer.write_image_data(&pixels).expect("pixels");
        writer.finish().expect("finish");
        out
    }

    #[test]
    fn a_screenshot_replaces_the_file_only_when_the_page_visibly_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console/page.png");
        let first = png_with(100, 100, 0);
        save_screenshot(&path, &first).expect("missing file: written");
        assert_eq!(std::fs::read(&path).expect("read"), first);
        // 50 of 10,000 pixels (0.5 %): a timestamp changed; the file stays as it was.
        save_screenshot(&path, &png_with(100, 100, 50)).expect("save");
        assert_eq!(std::fs::read(&path).expect("read"), first);
        // 500 pixels (5 %): the page changed.
        let changed = png_with(100, 100, 500);
        save_screenshot(&path, &changed).expect("save");
        assert_eq!(std::fs::read(&path).expect("read"), changed);
        // Another size is always another picture.
        let wider = png_with(120, 100, 500);
        save_screenshot(&path, &wider).expect("save");
        assert_eq!(std::fs::read(&path).expect("read"), wider);
        // A file that is not a PNG is replaced; bytes that are not one are refused.
        std::fs::write(&path, b"not a png").expect("write");
        save_screenshot(&path, &first).expect("save");
        assert_eq!(std::fs::read(&path).expect("read"), first);
        assert!(save_screenshot(&path, b"not a png").is_err());
    }
}
