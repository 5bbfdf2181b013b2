//! The one [`ChatModel`] that evals, model graders and the gRPC Chat RPC
//! call: it checks the request once and sends it to the local engine or an
//! HTTP provider.

use std::sync::Arc;

use async_trait::async_trait;

use super::chat::{ChatCompletion, ChatError, ChatModel, ChatRequest, ChatStream, LocalModels};
use super::providers::{HttpProvider, Providers};

/// Routes chat completions by model name, in this order:
///
/// 1. `provider/model`, where `provider` names a configured provider: to
///    that provider, which is asked for `model`.
/// 2. A name the local engine's catalog knows (a registered base model, a
///    fine-tuned `ft:...` model or one of its `...:ckpt-step-N`
///    checkpoints): to the local engine.
/// 3. Any other name, when providers are configured: to the first
///    (default) provider, unchanged. So a bare grader model such as
///    `gpt-4.1-mini` goes to OpenAI, and `org/model` to a server that names
///    its models that way.
/// 4. Otherwise: not found.
pub struct ModelRouter {
    providers: Arc<Providers>,
    local: Option<Arc<dyn LocalModels>>,
}

enum Target {
    Provider(Arc<HttpProvider>, String),
    Local(Arc<dyn LocalModels>),
}

impl ModelRouter {
    pub fn new(providers: Arc<Providers>, local: Option<Arc<dyn LocalModels>>) -> Self {
        Self { providers, local }
    }

    async fn route(&self, model: &str) -> Result<Target, ChatError> {
        if let Some((provider, name)) = self.providers.named(model) {
            return Ok(Target::Provider(provider, name.to_string()));
        }
        if let Some(local) = &self.local
            && local.knows(model).await?
        {
            return Ok(Target::Local(local.clone()));
        }
        match self.providers.default_provider() {
            Some(provider) => Ok(Target::Provider(provider, model.to_string())),
            None => Err(ChatError::NotFound(model.to_string())),
        }
    }
}

#[async_trait]
impl ChatModel for ModelRouter {
    async fn stream(&self, mut request: ChatRequest) -> Result<ChatStream, ChatError> {
        request.validate()?;
        match self.route(&request.model).await? {
            Target::Provider(provider, name) => {
                request.model = name;
                provider.stream(request).await
            }
            Target::Local(local) => local.stream(request).await,
        }
    }

    async fn serves(&self, model: &str) -> Result<bool, ChatError> {
        match self.route(model).await {
            Ok(_) => Ok(true),
            Err(ChatError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Each target's own `complete` (a provider asks for one JSON body).
    async fn complete(&self, mut request: ChatRequest) -> Result<ChatCompletion, ChatError> {
        request.validate()?;
        match self.route(&request.model).await? {
            Target::Provider(provider, name) => {
                request.model = name;
                provider.complete(request).await
            }
            Target::Local(local) => local.complete(request).await,
        }
    }
}
