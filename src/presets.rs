//! Postback templates for well-known trackers, so a partner picks "Voluum" and types a domain
//! instead of assembling a URL by hand.
//!
//! ```
//! use postback::presets::{PresetParams, Tracker};
//! use postback::template::Macro;
//!
//! let preset = Tracker::Voluum.preset(&PresetParams::new("track.example.com"))?;
//! assert_eq!(
//!     preset.url(),
//!     "https://track.example.com/postback?cid={sub1}&payout={payout}&txid={conversion_id}&currency={currency}&et={event_name}"
//! );
//! // The partner's click id travels in another sub id? Say so:
//! let p = Tracker::Binom.preset(&PresetParams::new("b.example").click_id(Macro::SUB2))?;
//! assert!(p.url().contains("cnv_id={sub2}"));
//! # Ok::<(), postback::presets::PresetError>(())
//! ```

use std::fmt;

use percent_encoding::utf8_percent_encode;
use serde::{Deserialize, Serialize};

use crate::model::{Corrections, PostbackBuilder, PostbackId, ResponseCheck, StatusWords};
use crate::template::{Catalog, Macro, Template, TemplateError};

/// A tracker with a known inbound postback format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Tracker {
    /// Voluum: `cid` is the only mandatory parameter.
    Voluum,
    /// Binom v1 (`/click.php`).
    Binom,
    /// Binom v2 (`/click`).
    BinomV2,
    /// Keitaro: needs the postback key in the path.
    Keitaro,
    /// RedTrack.
    RedTrack,
    /// BeMob.
    BeMob,
    /// FunnelFlux Pro.
    FunnelFluxPro,
    /// PeerClick (the domain defaults to `pstb.peerclick.com`).
    PeerClick,
    /// ClickFlare.
    ClickFlare,
    /// AdsBridge (domain `SUB.adsbtrk.com`).
    AdsBridge,
    /// Everflow as the receiver: needs the network id (`nid`).
    Everflow,
    /// TUNE (HasOffers) as the receiver: needs the offer id and security token; answers 200
    /// with `success=false` on rejection, so the preset checks the body.
    Tune,
}

impl Tracker {
    /// Every tracker with a preset.
    pub const ALL: [Tracker; 12] = [
        Tracker::Voluum,
        Tracker::Binom,
        Tracker::BinomV2,
        Tracker::Keitaro,
        Tracker::RedTrack,
        Tracker::BeMob,
        Tracker::FunnelFluxPro,
        Tracker::PeerClick,
        Tracker::ClickFlare,
        Tracker::AdsBridge,
        Tracker::Everflow,
        Tracker::Tune,
    ];

    /// The tracker's name as people write it.
    pub const fn name(self) -> &'static str {
        match self {
            Tracker::Voluum => "Voluum",
            Tracker::Binom => "Binom",
            Tracker::BinomV2 => "Binom v2",
            Tracker::Keitaro => "Keitaro",
            Tracker::RedTrack => "RedTrack",
            Tracker::BeMob => "BeMob",
            Tracker::FunnelFluxPro => "FunnelFlux Pro",
            Tracker::PeerClick => "PeerClick",
            Tracker::ClickFlare => "ClickFlare",
            Tracker::AdsBridge => "AdsBridge",
            Tracker::Everflow => "Everflow",
            Tracker::Tune => "TUNE",
        }
    }

    /// The URL pattern: `DOMAIN`, `KEY`, `OFFER` and `CLICK` are filled from [`PresetParams`];
    /// the rest are network macros.
    const fn pattern(self) -> &'static str {
        match self {
            Tracker::Voluum => {
                "https://DOMAIN/postback?cid=CLICK&payout={payout}&txid={conversion_id}&currency={currency}&et={event_name}"
            }
            Tracker::Binom => {
                "https://DOMAIN/click.php?cnv_id=CLICK&payout={payout}&cnv_status={conversion_status}&cnv_currency={currency}"
            }
            Tracker::BinomV2 => {
                "https://DOMAIN/click?cnv_id=CLICK&payout={payout}&cnv_status={conversion_status}&cnv_currency={currency}"
            }
            Tracker::Keitaro => {
                "https://DOMAIN/KEY/postback?subid=CLICK&payout={payout}&tid={conversion_id}&currency={currency}&status={conversion_status}"
            }
            Tracker::RedTrack => {
                "https://DOMAIN/postback?clickid=CLICK&sum={payout}&type={event_name}&status={conversion_status}&rdtk_event_id={conversion_id}"
            }
            Tracker::BeMob => {
                "https://DOMAIN/postback?cid=CLICK&payout={payout}&txid={conversion_id}&status={conversion_status}"
            }
            Tracker::FunnelFluxPro => {
                "https://DOMAIN/pb/?hit=CLICK&tx={conversion_id}&rev={payout}"
            }
            Tracker::PeerClick => {
                "https://DOMAIN/postback?cid=CLICK&payout={payout}&txid={conversion_id}&currency={currency}&status={conversion_status}"
            }
            Tracker::ClickFlare => {
                "https://DOMAIN/cf/cv?click_id=CLICK&payout={payout}&txid={conversion_id}&ct={event_name}"
            }
            Tracker::AdsBridge => {
                "https://DOMAIN/trackpixel/track?tid=CLICK&amt={payout}&txid={conversion_id}"
            }
            Tracker::Everflow => {
                "https://DOMAIN/?nid=KEY&transaction_id=CLICK&amount={sale_amount}&order_id={conversion_id}"
            }
            Tracker::Tune => {
                "https://DOMAIN/aff_lsr?offer_id=OFFER&transaction_id=CLICK&amount={sale_amount}&security_token=KEY"
            }
        }
    }

    /// The query parameter that carries a conversion's status (`{conversion_status}` in the
    /// preset), for trackers that take one: a postback needs it to take corrections
    /// ([`Preset::corrections`]).
    pub const fn status_param(self) -> Option<&'static str> {
        match self {
            Tracker::Binom | Tracker::BinomV2 => Some("cnv_status"),
            Tracker::Keitaro | Tracker::RedTrack | Tracker::BeMob | Tracker::PeerClick => {
                Some("status")
            }
            _ => None,
        }
    }

    /// How the tracker spells each status: Keitaro's `lead`, `sale`, `rejected`; the network's
    /// words for the others, which store the status as text.
    pub const fn status_words(self) -> StatusWords {
        match self {
            Tracker::Keitaro => StatusWords::keitaro(),
            _ => StatusWords::network(),
        }
    }

    /// What the key is called, for trackers that need one.
    const fn key_name(self) -> Option<&'static str> {
        match self {
            Tracker::Keitaro => Some("postback key"),
            Tracker::Everflow => Some("network id (nid)"),
            Tracker::Tune => Some("security token"),
            _ => None,
        }
    }

    const fn default_domain(self) -> Option<&'static str> {
        match self {
            Tracker::PeerClick => Some("pstb.peerclick.com"),
            _ => None,
        }
    }

    /// The body check for receivers that answer 200 when they reject a postback.
    fn response_check(self) -> Option<ResponseCheck> {
        match self {
            Tracker::Tune => Some(ResponseCheck::MustNotContain("success=false".to_owned())),
            _ => None,
        }
    }

    /// Fill the pattern.
    pub fn preset(self, params: &PresetParams) -> Result<Preset, PresetError> {
        let domain = match (params.domain.as_deref(), self.default_domain()) {
            (Some(d), _) if !d.trim().is_empty() => d.trim(),
            (_, Some(d)) => d,
            _ => return Err(PresetError::MissingDomain(self)),
        };
        check_domain(domain)?;
        let key = match self.key_name() {
            Some(what) => match params.key.as_deref().filter(|k| !k.is_empty()) {
                Some(k) => Some(utf8_percent_encode(k, crate::template::COMPONENT_SET).to_string()),
                None => {
                    return Err(PresetError::MissingKey {
                        tracker: self,
                        what,
                    });
                }
            },
            None => None,
        };
        let offer = match (self, params.offer.as_deref()) {
            (Tracker::Tune, Some(o)) if !o.is_empty() => {
                Some(utf8_percent_encode(o, crate::template::COMPONENT_SET).to_string())
            }
            (Tracker::Tune, _) => {
                return Err(PresetError::MissingKey {
                    tracker: self,
                    what: "offer id",
                });
            }
            _ => None,
        };
        let catalog = Catalog::standard();
        let click = catalog.name(params.click_id).unwrap_or("sub1");
        let mut url = self.pattern().replacen("DOMAIN", domain, 1).replacen(
            "CLICK",
            &format!("{{{click}}}"),
            1,
        );
        if let Some(k) = &key {
            url = url.replacen("KEY", k, 1);
        }
        if let Some(o) = &offer {
            url = url.replacen("OFFER", o, 1);
        }
        // Build once now, so a bad domain or key is reported here and not at send time.
        Template::parse(&url)?;
        let secrets = match (self, params.key.as_deref()) {
            // Keitaro's key and TUNE's token open the tracker to anyone who has them.
            (Tracker::Keitaro | Tracker::Tune, Some(k)) => vec![k.to_owned()],
            _ => Vec::new(),
        };
        Ok(Preset {
            tracker: self,
            url,
            response_check: self.response_check(),
            secrets,
        })
    }
}

impl fmt::Display for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A host name, IP literal or `host:port`: no scheme, path, credentials or macros.
fn check_domain(d: &str) -> Result<(), PresetError> {
    let bad = d.contains("://")
        || d.chars().any(|c| {
            c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@' | '{' | '}' | '\\' | '%')
        });
    if bad {
        return Err(PresetError::InvalidDomain(d.to_owned()));
    }
    Ok(())
}

/// What a partner fills in for a preset.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PresetParams {
    /// The tracker's (custom) domain, without scheme: `track.example.com`.
    pub domain: Option<String>,
    /// Keitaro's postback key, Everflow's network id, TUNE's security token.
    pub key: Option<String>,
    /// TUNE's offer id.
    pub offer: Option<String>,
    /// The network macro that carries the partner's click id (default `{sub1}`).
    pub click_id: Macro,
}

impl fmt::Debug for PresetParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresetParams")
            .field("domain", &self.domain)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("offer", &self.offer)
            .field("click_id", &self.click_id)
            .finish()
    }
}

impl PresetParams {
    /// Parameters with a domain and the click id in `{sub1}`.
    pub fn new(domain: impl Into<String>) -> PresetParams {
        PresetParams {
            domain: Some(domain.into()),
            key: None,
            offer: None,
            click_id: Macro::SUB1,
        }
    }

    /// Parameters without a domain, for trackers that have a fixed one.
    pub fn default_domain() -> PresetParams {
        PresetParams {
            domain: None,
            key: None,
            offer: None,
            click_id: Macro::SUB1,
        }
    }

    /// The key (Keitaro postback key, Everflow nid, TUNE security token).
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> PresetParams {
        self.key = Some(key.into());
        self
    }

    /// TUNE's offer id.
    #[must_use]
    pub fn offer(mut self, offer: impl Into<String>) -> PresetParams {
        self.offer = Some(offer.into());
        self
    }

    /// The macro that carries the partner's click id.
    #[must_use]
    pub fn click_id(mut self, m: Macro) -> PresetParams {
        self.click_id = m;
        self
    }
}

/// A filled preset: the URL template and, for some receivers, a check of the response body.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preset {
    tracker: Tracker,
    url: String,
    response_check: Option<ResponseCheck>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    secrets: Vec<String>,
}

impl fmt::Debug for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Preset")
            .field("tracker", &self.tracker)
            .field(
                "url",
                &crate::template::redact_url_with(&self.url, &self.secrets),
            )
            .field("response_check", &self.response_check)
            .finish()
    }
}

impl Preset {
    /// The tracker.
    pub fn tracker(&self) -> Tracker {
        self.tracker
    }
    /// The URL template, in the `{x}` dialect.
    pub fn url(&self) -> &str {
        &self.url
    }
    /// The response check, if the receiver needs one.
    pub fn response_check(&self) -> Option<&ResponseCheck> {
        self.response_check.as_ref()
    }
    /// `corrections` with the statuses spelt as this tracker takes them
    /// ([`Tracker::status_words`]), for [`PostbackBuilder::corrections`]. A tracker without a
    /// [`status_param`](Tracker::status_param) cannot take corrections: the build says so.
    pub fn corrections(&self, corrections: Corrections) -> Corrections {
        corrections.words(self.tracker.status_words())
    }
    /// The parsed template.
    pub fn template(&self) -> Result<Template, TemplateError> {
        Template::parse(&self.url)
    }
    /// A server-to-server postback builder with this URL and check; add the partner, offer and
    /// kind, then build.
    pub fn postback(&self, id: PostbackId) -> PostbackBuilder {
        let mut b = crate::model::Postback::builder(id).url(self.url.clone());
        for secret in &self.secrets {
            b = b.secret(secret.clone());
        }
        match &self.response_check {
            Some(c) => b.response_check(c.clone()),
            None => b,
        }
    }
}

/// A preset that cannot be filled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresetError {
    /// No domain.
    #[error("{0} needs the tracker's domain, such as track.example.com")]
    MissingDomain(Tracker),
    /// Not a bare host.
    #[error(
        "`{0}` is not a domain: give only the host (and port), such as track.example.com, without https:// or a path"
    )]
    InvalidDomain(String),
    /// A required key is missing.
    #[error("{tracker} needs the {what}: copy it from the tracker's postback settings")]
    MissingKey {
        /// The tracker.
        tracker: Tracker,
        /// What is missing.
        what: &'static str,
    },
    /// The filled URL is not a valid template.
    #[error(transparent)]
    Template(#[from] TemplateError),
}
