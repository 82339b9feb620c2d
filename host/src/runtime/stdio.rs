//! Plugin stdout / stderr: captured into a bounded buffer, never inherited. Past the bound,
//! bytes are counted and dropped, so a plugin that floods its output cannot grow host memory.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes kept per stream and request.
pub const CAPTURE_BYTES: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Buf {
    data: Vec<u8>,
    dropped: u64,
}

/// One captured stream.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    buf: Arc<Mutex<Buf>>,
}

impl Capture {
    fn lock(&self) -> MutexGuard<'_, Buf> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, bytes: &[u8]) {
        let mut b = self.lock();
        let room = CAPTURE_BYTES.saturating_sub(b.data.len());
        let kept = bytes.len().min(room);
        b.data.extend_from_slice(&bytes[..kept]);
        b.dropped += (bytes.len() - kept) as u64;
    }

    /// What was kept, as text, and how many bytes were dropped.
    pub fn take(&self) -> (String, u64) {
        let mut b = self.lock();
        let text = String::from_utf8_lossy(&b.data).into_owned();
        b.data.clear();
        (text, std::mem::take(&mut b.dropped))
    }

    /// What was kept so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().data).into_owned()
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_bound_and_counts_the_rest() {
        let mut c = Capture::default();
        for _ in 0..100 {
            c.write(Bytes::from(vec![b'x'; 10_000])).unwrap();
        }
        let (text, dropped) = c.take();
        assert_eq!(text.len(), CAPTURE_BYTES);
        assert_eq!(dropped, 1_000_000 - CAPTURE_BYTES as u64);
    }
}
