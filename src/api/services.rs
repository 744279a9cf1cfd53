//! The API built from the served models: drsn.v1 and KServe V2 over gRPC (each behind its message framing, the token
//! and the transport error mapping), optional reflection, and the REST routes (V2 and the machines as JSON).

use std::sync::Arc;
use std::time::Duration;

use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

use crate::api::auth::Tokens;
use crate::api::grpc::frames;
use crate::api::grpc::proto::{self, diagnosis_server::DiagnosisServer};
use crate::api::grpc::service::{DiagnosisService, StreamTimeouts};
use crate::api::grpc::transport_errors::TransportErrors;
use crate::api::kserve::proto::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::api::kserve::{self, ModelControl, Ready, V2Models};
use crate::api::machines;
use crate::condition::Conditions;
use crate::engine::device::Placement;
use crate::error::StartupError;
use crate::pipeline::models::Models;

/// A V2 REST body may hold this many bytes of JSON per sample (a float's text and its separator), plus this much
/// for the rest of the request.
const JSON_BYTES_PER_SAMPLE: usize = 16;
const REST_BODY_OVERHEAD: usize = 64 << 10;

/// The API's settings.
#[derive(Clone)]
pub struct ApiSettings {
    /// Bearer tokens every call but health must carry; empty when authentication is off.
    pub tokens: Tokens,
    pub reflection: bool,
    /// A request must arrive in full within this long of its first byte.
    pub request_read_timeout: Duration,
    pub stream_timeouts: StreamTimeouts,
    /// Whether the replica takes work (V2's server and model readiness).
    pub ready: Ready,
    /// Loading and unloading model versions at run time (`None`: off).
    pub control: Option<Arc<dyn ModelControl>>,
}

/// The services a listener serves.
pub(crate) struct Api {
    /// gRPC: drsn.v1, KServe V2 and, when asked for, reflection.
    pub grpc: Routes,
    /// REST: KServe V2 and `/v1/machines`.
    pub rest: axum::Router,
}

impl Api {
    pub(crate) fn build(
        models: &Arc<Models>,
        conditions: &Arc<Conditions>,
        placement: Placement,
        settings: ApiSettings,
    ) -> Result<Self, StartupError> {
        let ApiSettings {
            tokens,
            reflection,
            request_read_timeout,
            stream_timeouts,
            ready,
            control,
        } = settings;
        // Each method's message limit is enforced from the framing (`frames`); tonic's own limit is the largest.
        let messages = frames::MessageLimits::new(models);
        let v2 = Arc::new(V2Models::new(models.clone(), ready, control));
        let inference = GrpcInferenceServiceServer::new(kserve::grpc::InferenceService(v2.clone()))
            .max_decoding_message_size(messages.largest());
        let inference = TransportErrors(tokens.guard(
            frames::inference(inference, models, v2.max_outputs(), request_read_timeout),
            kserve::grpc::OPEN_METHODS,
        ));
        let diagnosis = DiagnosisServer::new(DiagnosisService::new(
            models.clone(),
            conditions.clone(),
            placement,
            stream_timeouts,
        ))
        .max_decoding_message_size(messages.largest());
        let diagnosis = TransportErrors(tokens.guard(
            frames::diagnosis(diagnosis, models, request_read_timeout),
            &[],
        ));
        let mut grpc = Routes::default()
            .add_service(diagnosis)
            .add_service(inference);
        if reflection {
            let service = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(kserve::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .map_err(|e| StartupError::Config(format!("reflection: {e}")))?;
            grpc = grpc.add_service(InterceptedService::new(service, tokens.interceptor()));
        }
        let max_window = messages.max_window_values;
        let max_values = max_window * models.gate().admission().max_unary_windows;
        let rest = kserve::rest::router(
            v2,
            tokens.clone(),
            max_values * JSON_BYTES_PER_SAMPLE + REST_BODY_OVERHEAD,
            max_values,
        )
        .merge(machines::router(conditions.registry().clone(), tokens));
        Ok(Self { grpc, rest })
    }
}
