//! A real S3-compatible server for the tests: `moto` in server mode on a free loopback port, one
//! per test binary, installed on first use into a Python virtual environment under `target/`
//! (with pyarrow, the independent reader). It exits with the test binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The command that sets the server up by hand, named when it cannot be.
pub const INSTALL: &str =
    "python3 -m venv target/s3-venv && target/s3-venv/bin/pip install 'moto[server]' pyarrow";

/// The credentials the tests give the store (moto accepts any).
pub const ACCESS_KEY_ID: &str = "AKIATESTS3KEYID0001";
pub const SECRET_ACCESS_KEY: &str = "s3-secret-never-printed/xyz";

fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/s3-venv")
}

/// The venv's Python, with moto and pyarrow installed (installs them the first time, under a
/// file lock so test binaries running at once install once).
pub fn python() -> PathBuf {
    let venv = venv();
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import moto.server, pyarrow.fs, boto3"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return python;
    }
    std::fs::create_dir_all(venv.parent().unwrap()).unwrap();
    let lock = std::fs::File::create(venv.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    if ready(&python) {
        return python;
    }
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{what}: {e}; set the S3 test server up with: {INSTALL}"));
        assert!(
            out.status.success(),
            "{what} failed; the object-storage tests need an S3 server (moto) from PyPI. Set it \
             up with: {INSTALL}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !python.exists() {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        );
    }
    run(
        Command::new(&python).args(["-m", "pip", "install", "--quiet", "moto[server]", "pyarrow"]),
        "pip install 'moto[server]' pyarrow",
    );
    python
}

/// The running server.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The server (it exits when the test binary does).
    _process: std::process::Child,
}

/// Runs moto and exits when its parent (the test binary) does.
const WRAPPER: &str = r#"
import os, sys, threading, time
parent = os.getppid()
def watch():
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.3)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
sys.argv = ["moto_server", "-H", "127.0.0.1", "-p", sys.argv[1]]
main()
"#;

/// The test binary's server, started on first use.
pub fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(start_moto)
}

/// A server of the calling test's own (its settings, such as when authentication starts, are
/// the server's, not a bucket's); it stops when dropped.
pub fn private_server() -> PrivateS3Server {
    PrivateS3Server(start_moto())
}

/// A server that stops when dropped.
pub struct PrivateS3Server(pub S3Server);

impl Drop for PrivateS3Server {
    fn drop(&mut self) {
        let _ = self.0._process.kill();
        let _ = self.0._process.wait();
    }
}

impl S3Server {
    /// From the `n`th request on, the server checks every request's credentials against its
    /// (empty) IAM: each is refused with 403, as a bucket policy revoked mid-run would be.
    pub async fn refuse_after(&self, n: usize) {
        let r = reqwest::Client::new()
            .post(format!("{}/moto-api/reset-auth", self.endpoint))
            .body(n.to_string())
            .send()
            .await
            .expect("moto reset-auth");
        assert!(r.status().is_success(), "moto reset-auth: {}", r.status());
    }
}

fn start_moto() -> S3Server {
    {
        let python = python();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new(&python)
            .args(["-c", WRAPPER, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto: {e}; set it up with: {INSTALL}"));
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on {endpoint} within 60 s; set it up with: {INSTALL}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server {
            endpoint,
            _process: process,
        }
    }
}

impl S3Server {
    /// Creates a bucket with a fresh name and returns it.
    pub async fn bucket(&self) -> String {
        let name = format!("ccc-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let r = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .expect("create bucket");
        assert!(r.status().is_success(), "create bucket: {}", r.status());
        name
    }

    /// The environment a `ccc-etl` process needs to use this server as S3.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_string()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }

    /// Runs a Python snippet in the venv with `ENDPOINT` and `BUCKET` set; returns its stdout.
    pub fn python(&self, bucket: &str, code: &str) -> String {
        let out = Command::new(python())
            .args(["-c", code])
            .env("ENDPOINT", &self.endpoint)
            .env("BUCKET", bucket)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl S3Server {
    /// A client of one bucket, as another engine would hold.
    pub fn store(
        &self,
        bucket: &str,
        conditional: bool,
    ) -> std::sync::Arc<dyn object_store::ObjectStore> {
        self.store_via(&self.endpoint, bucket, conditional)
    }

    /// [`S3Server::store`] through `endpoint` (a proxy in front of the server).
    pub fn store_via(
        &self,
        endpoint: &str,
        bucket: &str,
        conditional: bool,
    ) -> std::sync::Arc<dyn object_store::ObjectStore> {
        use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
        std::sync::Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_endpoint(endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id(ACCESS_KEY_ID)
                .with_secret_access_key(SECRET_ACCESS_KEY)
                .with_conditional_put(if conditional {
                    S3ConditionalPut::ETagMatch
                } else {
                    S3ConditionalPut::Disabled
                })
                .build()
                .unwrap(),
        )
    }
}

/// A root on the test server, read and written with the test's own client.
pub fn object_root(
    s3: &S3Server,
    url: &ccc_etl::config::ObjectUrl,
) -> ccc_etl::sink::parquet::ObjectRoot {
    ccc_etl::sink::parquet::ObjectRoot::with_store(s3.store(&url.bucket, true), url.clone(), true)
}
