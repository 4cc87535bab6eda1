//! A real headless Chromium for page tests: Debian's `chromium` driven through its
//! `chromedriver` (WebDriver) with fantoccini. `scripts/setup-test-deps.sh` installs both.
use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tempfile::TempDir;

use crate::harness::{free_port, wait_for};

/// True when `CI` is set to anything but `false`/`0`: then a missing dependency fails a test.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "false" | "0"))
}

fn find(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// chromedriver and a headless Chromium session; both end when this is dropped, also when a
/// test fails half-way.
pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    _dir: TempDir,
}

impl Drop for Browser {
    /// chromedriver leads its own process group and Chromium's processes stay in it, so one
    /// signal to the group ends them all (killing chromedriver alone leaves Chromium running).
    fn drop(&mut self) {
        let group = self
            .driver
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

impl Browser {
    /// `None` (with a loud message) when chromium or chromedriver is missing outside CI; a
    /// failure in CI. `LOCAL_PROVIDER_TEST_CHROMIUM` and `LOCAL_PROVIDER_TEST_CHROMEDRIVER`
    /// name other binaries.
    pub async fn start() -> Option<Self> {
        let chromium = find(
            "LOCAL_PROVIDER_TEST_CHROMIUM",
            &["chromium", "chromium-browser"],
        );
        let driver = find("LOCAL_PROVIDER_TEST_CHROMEDRIVER", &["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let msg = "chromium and chromedriver are needed for the status page test; \
                       scripts/setup-test-deps.sh installs them (Debian: chromium chromium-driver)";
            assert!(!in_ci(), "{msg}");
            eprintln!("\n*** SKIPPED (not in CI): {msg} ***\n");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("chromedriver.log")).unwrap();
        let driver = tokio::process::Command::new(&driver)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        wait_for(Duration::from_secs(20), "chromedriver to answer", || {
            let status = format!("{url}/status");
            async move {
                crate::harness::get(&status)
                    .await
                    .ok()
                    .filter(|(code, body)| *code == 200 && body["value"]["ready"] == true)
            }
        })
        .await;
        let profile = dir.path().join("profile");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1500",
                         "--no-first-run", "--disable-extensions",
                         format!("--user-data-dir={}", profile.display())],
            },
        });
        let caps = caps.as_object().cloned().unwrap_or_default();
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot open a Chromium session: {e}"));
        Some(Self {
            client,
            driver,
            _dir: dir,
        })
    }

    /// An attribute of the element with `id` (`None` when either is missing).
    pub async fn attr(&self, id: &str, name: &str) -> Option<String> {
        let el = self.client.find(Locator::Id(id)).await.ok()?;
        el.attr(name).await.ok().flatten()
    }

    /// The rendered text of the element with `id` (`None` when it is missing).
    pub async fn text(&self, id: &str) -> Option<String> {
        let el = self.client.find(Locator::Id(id)).await.ok()?;
        el.text().await.ok()
    }

    /// Waits until `data-state` of `id` is `state`; its text then.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> String {
        wait_for(timeout, &format!("#{id} data-state={state}"), || async {
            if self.attr(id, "data-state").await.as_deref() == Some(state) {
                self.text(id).await
            } else {
                None
            }
        })
        .await
    }

    /// Waits until the text of `id` satisfies `pred`; that text.
    pub async fn wait_text(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        wait_for(timeout, what, || async {
            self.text(id).await.filter(|t| pred(t))
        })
        .await
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}
