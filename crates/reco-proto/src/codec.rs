//! The codec of every generated reco client and server (build.rs sets it with `codec_path`): protobuf through
//! prost, as `tonic_prost::ProstCodec`, but decoding from a plain byte slice and encoding into a `Vec` first.
//!
//! Why: prost reads and writes a message field by field through the buffer it is given. tonic's buffers
//! (`DecodeBuf`, `EncodeBuf`, over `BytesMut`) pay an out-of-line call and a bounds check per field, and per
//! element of a packed field: for a 64-float embedding, 64 of each. A profile of a client decoding 200-item
//! batches had `BytesMut::advance` and prost's float loop at 15% of its CPU. A message arrives whole in one
//! contiguous buffer, so it is decoded from that slice, where each read is an inlined pointer bump; a message to
//! send is encoded into a `Vec` (the same, for writes) and copied into tonic's buffer in one go.

use std::{any::Any, marker::PhantomData};

use prost::{Message, bytes::Buf, bytes::BufMut};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// `application/grpc+proto` via prost; see the module documentation.
#[derive(Debug, Clone)]
pub struct SliceCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SliceCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SliceCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SliceEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SliceEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder(PhantomData)
    }
}

/// Encodes into a `Vec`, then copies it into tonic's buffer; a message made of parts encoded earlier goes straight
/// into tonic's buffer.
#[derive(Debug, Clone)]
pub struct SliceEncoder<T>(PhantomData<T>);

/// Whether `item` is made of parts encoded earlier (`encoded.rs`): an item batch answered from the feature
/// service's encoded items is a couple of hundred slices of ~450 bytes. Written straight into tonic's buffer it
/// costs one call per slice, where encoding it into a `Vec` first would copy the whole ~90 KB message once more (a
/// fifth of the feature service's CPU per batch was `memmove`). A ranking request's encoded candidates still carry
/// their sources field by field, so it is not one.
fn encoded_in_parts(item: &dyn Any) -> bool {
    item.downcast_ref::<crate::encoded::BatchGetItemFeaturesResponse>()
        .is_some_and(|m| m.items.is_empty())
}

impl<T: Message + 'static> Encoder for SliceEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        if encoded_in_parts(&item) {
            buf.reserve(item.encoded_len());
            return item
                .encode(buf)
                .map_err(|e| Status::internal(format!("encoding the answer: {e}")));
        }
        let mut bytes = Vec::with_capacity(item.encoded_len());
        item.encode(&mut bytes)
            .expect("a Vec sized by encoded_len has room");
        buf.put_slice(&bytes);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes from the message's bytes as one slice (from tonic's buffer, field by field, should they ever not be
/// contiguous).
#[derive(Debug, Clone)]
pub struct SliceDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        let decoded = if buf.chunk().len() == len {
            let decoded = U::decode(buf.chunk());
            buf.advance(len);
            decoded
        } else {
            U::decode(buf)
        };
        // INTERNAL for a message that does not parse, as tonic's own codec and the gRPC status code guide say.
        decoded
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
