//! A real headless Chromium for browser tests, driven over WebDriver: Debian's `chromium` and
//! `chromium-driver` (`chromedriver`), with `fantoccini` as the client.
//!
//! [`Chrome::start`] starts `chromedriver` on a free port as a child process, opens one browser
//! session on a fresh profile (its own temporary `--user-data-dir`), and hands out the
//! [`Client`]. Dropping the [`Chrome`] ends the browser session and kills that chromedriver by
//! its PID, so a failing test leaves nothing running. A missing browser or driver fails the test
//! with a message saying what to install: it is never a skip.
//!
//! Made to be shared by every browser test (the admin page, and TLS, cookies or WebSockets
//! through the proxy): extra Chromium switches and `acceptInsecureCerts` go in [`Options`],
//! and [`Chrome::wait_for`] polls any JavaScript condition.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

use super::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

pub use fantoccini::Locator;

/// How long [`Chrome::wait_for`] waits for a condition.
pub const WAIT: Duration = Duration::from_secs(10);

const INSTALL_HINT: &str = "the browser tests need Debian's `chromium` and `chromium-driver` \
    packages (`apt-get install chromium chromium-driver`); .ci/run installs them";

/// What a test may change about the browser it gets.
#[derive(Clone, Debug)]
pub struct Options {
    /// Chromium switches added to the defaults (`--headless=new`, `--no-sandbox`,
    /// `--disable-gpu`, `--window-size=...`, a fresh `--user-data-dir`).
    pub args: Vec<String>,
    /// The viewport's size in CSS pixels (a screenshot's size).
    pub window: (u32, u32),
    /// Let the browser accept certificates it cannot verify (a TLS test's own CA-less cert).
    pub accept_insecure_certs: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            args: Vec::new(),
            window: (1280, 900),
            accept_insecure_certs: false,
        }
    }
}

/// A chromedriver child process and one browser session on it.
pub struct Chrome {
    client: Option<Client>,
    session: Option<String>,
    driver: Child,
    driver_addr: SocketAddr,
    /// Chromium's profile, removed after the browser is gone.
    _profile: tempfile::TempDir,
}

impl Chrome {
    /// A headless Chromium with the default [`Options`].
    pub async fn start() -> Chrome {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Chrome {
        let chromium = find_program(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
            panic!("no `chromium` on PATH: {INSTALL_HINT}");
        });
        let chromedriver = find_program(&["chromedriver"]).unwrap_or_else(|| {
            panic!("no `chromedriver` on PATH: {INSTALL_HINT}");
        });

        let port = free_port();
        let driver_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; {INSTALL_HINT}",
                    chromedriver.display()
                )
            });
        let profile = tempfile::tempdir().unwrap();
        // Owned from here on, so a failure below still kills the driver.
        let mut chrome = Chrome {
            client: None,
            session: None,
            driver,
            driver_addr,
            _profile: profile,
        };
        chrome.wait_for_driver();

        let (width, height) = options.window;
        let mut args = vec![
            "--headless=new".to_owned(),
            // CI runs as root, where Chromium's sandbox refuses to start.
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", chrome._profile.path().display()),
        ];
        args.extend(options.args);
        let capabilities = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": options.accept_insecure_certs,
            // A dialog stays open for the test to see (get_alert_text), instead of being
            // dismissed behind its back.
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": args,
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{driver_addr}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver at {driver_addr} could not start {}: {e}; {INSTALL_HINT}",
                    chromium.display()
                )
            });
        chrome.session = client.session_id().await.ok().flatten();
        chrome.client = Some(client);
        chrome.fit_viewport(width, height).await;
        chrome
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the browser session is closed")
    }

    /// Polls `condition`, a JavaScript function body that returns a value, until it returns
    /// something truthy (not `false`, `null`, `0` or `""`), and returns that. Fails the test
    /// with `what` and the last value after [`WAIT`].
    pub async fn wait_for(&self, what: &str, condition: &str) -> Value {
        let start = Instant::now();
        loop {
            let value = self
                .client()
                .execute(condition, Vec::new())
                .await
                .unwrap_or_else(|e| panic!("waiting for {what}: the script failed: {e}"));
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(_) | Value::Object(_) => true,
            };
            if truthy {
                return value;
            }
            if start.elapsed() > WAIT {
                panic!("gave up waiting for {what} after {WAIT:?}; last value {value}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends the browser session (Chromium quits) and then the driver.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            client.close().await.expect("closing the browser session");
            self.session = None;
        }
        // Drop kills chromedriver.
    }

    /// Makes the page's viewport (what a screenshot shows) `width`×`height`: `--window-size`
    /// sets the window, which headless Chromium counts with room for browser controls.
    async fn fit_viewport(&self, width: u32, height: u32) {
        let client = self.client();
        let frame = client
            .execute(
                "return [window.outerWidth - window.innerWidth, \
                         window.outerHeight - window.innerHeight]",
                Vec::new(),
            )
            .await
            .unwrap();
        let extra = |i: usize| u32::try_from(frame[i].as_u64().unwrap_or(0)).unwrap_or(0);
        if extra(0) > 0 || extra(1) > 0 {
            client
                .set_window_size(width + extra(0), height + extra(1))
                .await
                .unwrap();
        }
    }

    /// Waits until chromedriver accepts connections.
    fn wait_for_driver(&mut self) {
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&self.driver_addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(status) = self.driver.try_wait().unwrap() {
                panic!("chromedriver exited at start ({status}); {INSTALL_HINT}");
            }
            if start.elapsed() > Duration::from_secs(15) {
                panic!(
                    "chromedriver did not listen on {} in 15 s",
                    self.driver_addr
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        // A test that failed before `close`: end the browser session with a plain blocking
        // request (no runtime here), so chromedriver quits its Chromium before it is killed.
        if let Some(session) = self.session.take() {
            delete_session(self.driver_addr, &session);
        }
        self.client = None;
        if self.driver.try_wait().ok().flatten().is_none() {
            let _ = self.driver.kill();
            let _ = self.driver.wait();
        }
    }
}

fn delete_session(addr: SocketAddr, session: &str) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
}

/// The first of `names` found on `PATH`.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
