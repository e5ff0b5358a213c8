use bytes::Bytes;
use serde_json::Value;

/// One request's generated answer in some API's shape (chat or text
/// completion, Responses), so every shape is paced, counted, crashed and
/// cancelled by the same serving code.
pub trait Reply: Send + 'static {
    /// Ids carry the request number so logs and replies can be matched up;
    /// the number is only assigned once a request has passed validation.
    fn set_number(&mut self, number: u64);
    fn id(&self) -> &str;
    fn streamed(&self) -> bool;
    /// Tokens to generate: what `--token-delay` is paid for.
    fn tokens(&self) -> u64;
    /// The whole answer, when not streamed.
    fn full_response(&self) -> Value;
    /// Stream events, already framed, before token 0.
    fn opening_events(&self) -> Vec<Bytes>;
    fn token_event(&self, i: u64) -> Bytes;
    fn closing_events(&self) -> Vec<Bytes>;
    /// How the stream ends if the model is unloaded under it after `sent`
    /// tokens.
    fn abort_events(&self, sent: u64) -> Vec<Bytes>;
}

/// `id`, `streamed` and `tokens` for a reply that keeps them in fields of
/// those names (`id`, `stream`, `tokens`): the same three lines in every shape.
macro_rules! reply_fields {
    () => {
        fn id(&self) -> &str {
            &self.id
        }

        fn streamed(&self) -> bool {
            self.stream
        }

        fn tokens(&self) -> u64 {
            self.tokens
        }
    };
}
pub(crate) use reply_fields;
