// TEMPORARY STUB
pub trait TokenCounter: Send + Sync { fn name(&self) -> &str; fn count(&self, text: &str) -> usize; }
pub struct O200k;
impl O200k { pub fn new() -> Self { O200k } }
impl TokenCounter for O200k { fn name(&self) -> &str { "o200k_base" } fn count(&self, t: &str) -> usize { t.split_whitespace().count() } }
