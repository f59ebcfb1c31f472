//! Sealed objects as streams: a writer that seals what it is given segment by segment, and a
//! reader that opens a stream of sealed chunks (downloads of any size, never whole in memory).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use aes_gcm::aead::stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::aead::Payload;
use aes_gcm::Aes256Gcm;
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::io::AsyncWrite;

use crate::keyring::{DataKey, Keyring};
use crate::sealed::{self, OBJECT_HEADER, SEGMENT, TAG};
use crate::VaultError;

/// Seals everything written to it into `inner` (the object format of `crate::sealed`). The
/// object is complete only after `shutdown`, which seals the last segment.
pub struct EncryptingWriter<W> {
    inner: W,
    header: [u8; OBJECT_HEADER],
    encryptor: Option<EncryptorBE32<Aes256Gcm>>,
    plain: Vec<u8>,
    out: Bytes,
}

impl<W: AsyncWrite + Unpin> EncryptingWriter<W> {
    pub fn new(key: &DataKey, inner: W) -> Self {
        let header = sealed::object_header(key.id());
        Self {
            inner,
            encryptor: Some(sealed::encryptor(key, &header)),
            header,
            plain: Vec::with_capacity(SEGMENT),
            out: Bytes::copy_from_slice(&header),
        }
    }

    /// Writes out what is sealed and not yet taken by `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn seal_segment(&mut self, last: bool) -> std::io::Result<()> {
        let payload = Payload {
            msg: &self.plain,
            aad: &self.header,
        };
        let sealed = if last {
            self.encryptor.take().map(|e| e.encrypt_last(payload))
        } else {
            self.encryptor.as_mut().map(|e| e.encrypt_next(payload))
        };
        let sealed = sealed
            .ok_or_else(|| std::io::Error::other("object already sealed"))?
            .map_err(|_| std::io::Error::other("sealing failed"))?;
        self.plain.clear();
        self.out = Bytes::from(sealed);
        Ok(())
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for EncryptingWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // A full segment is sealed only once more data follows it: the last one is different.
        if this.plain.len() == SEGMENT {
            this.seal_segment(false)?;
            ready!(this.poll_drain(cx))?;
        }
        let n = buf.len().min(SEGMENT - this.plain.len());
        this.plain.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if this.encryptor.is_some() {
            this.seal_segment(true)?;
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl Keyring {
    /// Opens a stream of sealed chunks (as a store returns them) into a stream of plaintext
    /// segments, with the key the object's header names. An error ends the stream.
    pub async fn open_stream<S, E>(
        &self,
        sealed: S,
    ) -> Result<impl Stream<Item = Result<Bytes, VaultError>> + Send + 'static, VaultError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
        E: std::fmt::Display,
    {
        let mut sealed = sealed.map_err(|e| VaultError::Storage(e.to_string()));
        let mut buffer = BytesMut::new();
        while buffer.len() < OBJECT_HEADER {
            match sealed.next().await {
                Some(chunk) => buffer.extend_from_slice(&chunk?),
                None => return Err(VaultError::Corrupt("object shorter than its header")),
            }
        }
        let header = buffer.split_to(OBJECT_HEADER).freeze();
        let key: Arc<DataKey> = self.by_id(sealed::key_id_of(&header)?).await?;
        let state = Opening {
            decryptor: Some(sealed::decryptor(&key, &header)),
            header,
            buffer,
            sealed: Some(sealed),
        };
        Ok(futures::stream::try_unfold(state, Opening::next))
    }
}

struct Opening<S> {
    decryptor: Option<DecryptorBE32<Aes256Gcm>>,
    header: Bytes,
    buffer: BytesMut,
    sealed: Option<S>,
}

impl<S> Opening<S>
where
    S: Stream<Item = Result<Bytes, VaultError>> + Unpin,
{
    async fn next(mut self) -> Result<Option<(Bytes, Self)>, VaultError> {
        loop {
            let Some(decryptor) = self.decryptor.as_mut() else {
                return Ok(None);
            };
            // More than a whole segment buffered: the first one is not the last.
            if self.buffer.len() > SEGMENT + TAG {
                let segment = self.buffer.split_to(SEGMENT + TAG);
                let plain = decryptor
                    .decrypt_next(Payload {
                        msg: &segment,
                        aad: &self.header,
                    })
                    .map_err(|_| VaultError::Corrupt("a segment fails its tag"))?;
                return Ok(Some((Bytes::from(plain), self)));
            }
            match self.sealed.as_mut() {
                Some(sealed) => match sealed.next().await {
                    Some(chunk) => self.buffer.extend_from_slice(&chunk?),
                    None => self.sealed = None,
                },
                None => {
                    let decryptor = self.decryptor.take().expect("checked above");
                    let plain = decryptor
                        .decrypt_last(Payload {
                            msg: &self.buffer,
                            aad: &self.header,
                        })
                        .map_err(|_| VaultError::Corrupt("the last segment fails its tag"))?;
                    self.buffer.clear();
                    return Ok(Some((Bytes::from(plain), self)));
                }
            }
        }
    }
}
