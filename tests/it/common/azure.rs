//! Azurite, Microsoft's Azure Storage emulator (npm), for the tests: one blob service per test
//! binary on a free loopback port, installed on first use under `target/azurite` with the
//! machine's npm; containers are created with the Azure SDK for Python (PyPI). It exits with the
//! test binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use object_store::ObjectStore;

/// Azurite's well-known development account and key (public, in Microsoft's documentation).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How to set it up by hand, named when it cannot be.
pub const INSTALL: &str = "npm install --prefix target/azurite azurite@3";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/azurite")
}

/// The `azurite-blob` script, installed the first time (under a file lock).
fn azurite() -> PathBuf {
    let bin = dir().join("node_modules/.bin/azurite-blob");
    if bin.exists() {
        return bin;
    }
    std::fs::create_dir_all(dir()).unwrap();
    let lock = std::fs::File::create(dir().with_extension("lock")).unwrap();
    lock.lock().unwrap();
    if !bin.exists() {
        let out = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(dir())
            .arg("azurite@3")
            .output()
            .unwrap_or_else(|e| {
                panic!("npm: {e}; the Azure tests need Node.js and npm ({INSTALL})")
            });
        assert!(
            out.status.success(),
            "{INSTALL} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bin
}

/// Runs Azurite's blob service and stops it when the parent (the test binary) exits.
const WRAPPER: &str = r#"
import os, subprocess, sys, time
parent = os.getppid()
p = subprocess.Popen([sys.argv[1], "--blobHost", "127.0.0.1", "--blobPort", sys.argv[2],
                      "--inMemoryPersistence", "--skipApiVersionCheck", "--silent"])
while os.getppid() == parent and p.poll() is None:
    time.sleep(0.3)
p.terminate()
"#;

/// The running blob service.
pub struct Azurite {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _process: std::process::Child,
}

/// The test binary's Azurite, started on first use.
pub fn server() -> &'static Azurite {
    static SERVER: OnceLock<Azurite> = OnceLock::new();
    SERVER.get_or_init(|| {
        let bin = azurite();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new("python3")
            .args(["-c", WRAPPER])
            .arg(&bin)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Azurite did not start on {url}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Azurite {
            url,
            _process: process,
        }
    })
}

impl Azurite {
    /// The environment a `ccc-etl` process reaches it with (object_store's emulator mode).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.url.clone()),
            ("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT.into()),
        ]
    }

    /// A new, empty container.
    pub fn container(&self) -> String {
        let name = format!("c{}", uuid::Uuid::new_v4().simple());
        let python = super::venv_python(
            "azure-venv",
            "import azure.storage.blob",
            &["azure-storage-blob"],
            "the Azure tests create containers with the Azure SDK for Python",
        );
        let conn = format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};\
             BlobEndpoint={}/{ACCOUNT};",
            self.url
        );
        let out = Command::new(python)
            .args([
                "-c",
                "import sys; from azure.storage.blob import BlobServiceClient as B; \
                 B.from_connection_string(sys.argv[1]).create_container(sys.argv[2])",
                &conn,
                &name,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        name
    }

    /// A client of `container` in this process (another writer, as another process would be).
    pub fn store(&self, container: &str) -> Arc<dyn ObjectStore> {
        let store = object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(ACCOUNT)
            .with_access_key(KEY)
            .with_container_name(container)
            .with_endpoint(format!("{}/{ACCOUNT}", self.url))
            .with_allow_http(true)
            .build()
            .unwrap();
        Arc::new(store)
    }
}
