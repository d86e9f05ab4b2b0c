//! A real server on a loopback port (port 0), in this process, with a client for it.
#![allow(dead_code)]

pub mod fake_embedder;

use engram_core::{Database, DatabaseOptions};
use engram_server::{router, serve, AppState, Config, Embedder};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub struct TestServer {
    pub addr: SocketAddr,
    pub client: Client,
    /// Sent with every request unless a test overrides it.
    pub key: Option<String>,
    pub dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("db");
        let mut server = Self::start_in(&dir, config).await;
        server._tmp = Some(tmp);
        server
    }

    /// A server on the database in `dir` (kept after the server stops).
    pub async fn start_in(dir: &Path, config: Config) -> TestServer {
        let db = Database::open(dir, DatabaseOptions::default()).expect("open database");
        let embedder = config.embedder.as_ref().map(|c| Embedder::new(c).expect("embedder"));
        let state = AppState::new(db, config, embedder);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(state.clone());
        let task = tokio::spawn(serve(listener, state, app, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            client: Client::new(),
            key: None,
            dir: dir.to_path_buf(),
            stop: Some(stop),
            task: Some(task),
            _tmp: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, self.url(path));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Sends `body` (if any) and returns status and JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self.request(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let response = r.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("response to {path} is not JSON: {text:?}"));
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Asserts success and returns the body.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, json) = self.call(method.clone(), path, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {json}");
        json
    }

    pub async fn visible_lsn(&self) -> u64 {
        let (status, stats) = self.get("/v1/stats").await;
        assert_eq!(status, StatusCode::OK, "{stats}");
        stats["visible_lsn"].as_u64().expect("visible_lsn")
    }

    /// Reads the whole change feed (no waiting) as JSON events.
    pub async fn changes(&self, query: &str) -> Vec<Value> {
        let response = self
            .request(Method::GET, &format!("/v1/changes?follow=false&{query}"))
            .send()
            .await
            .expect("feed");
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.expect("feed body");
        text.lines().map(|l| serde_json::from_str(l).expect("an event per line")).collect()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn config(text: &str) -> Config {
    Config::parse(text).expect("test config")
}
