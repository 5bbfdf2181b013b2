//! The codec every generated service and client uses: prost's, except that
//! a message that does not decode is the sender's mistake, answered
//! INVALID_ARGUMENT (prost's codec says INTERNAL). That covers values
//! nested deeper than prost's recursion limit (100), as a `Struct` of
//! grader JSON or metadata can be: the decoder stops there, without
//! recursing further, and the server goes on serving.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(ProstDecoder::new(BufferSettings::default()))
    }
}

#[derive(Debug, Clone)]
pub struct MessageDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| {
            if s.message().contains("recursion limit") {
                Status::invalid_argument("the message nests values more than 100 levels deep")
            } else {
                Status::invalid_argument(format!("the message does not decode: {}", s.message()))
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
