//! `copex whoami` and `copex partners`.

use anyhow::{Context, bail};
use tonic::transport::Channel;

use super::output::call_error;
use super::{KindArg, Output, PartnersCommand, RoleArg, json};
use crate::domain::names;
use crate::pb::{self, PartnerKind, PartnerState, Role};

type PartnerClient = pb::partner_service_client::PartnerServiceClient<Channel>;

/// `copex whoami`: the partner this certificate acts as.
pub(super) async fn whoami(partners: &mut PartnerClient, output: Output) -> anyhow::Result<()> {
    let me = partners
        .get_current_partner(pb::GetCurrentPartnerRequest {})
        .await
        .map_err(call_error)?
        .into_inner();
    match output {
        Output::Json => out!("{}", json::to_json(&me)?),
        Output::Text => {
            out!("{} ({})", me.name, me.display_name);
            out!("{}", partner_line(&me));
        }
    }
    Ok(())
}

pub(super) async fn run(
    partners: &mut PartnerClient,
    output: Output,
    command: PartnersCommand,
) -> anyhow::Result<()> {
    let print = |p: &pb::Partner| -> anyhow::Result<()> {
        match output {
            Output::Json => out!("{}", json::to_json(p)?),
            Output::Text => out!("{}", partner_line(p)),
        }
        Ok(())
    };
    match command {
        PartnersCommand::Create {
            id,
            display_name,
            kind,
            roles,
            identities,
            cas,
        } => {
            let mut ca_certificates = Vec::new();
            for path in &cas {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                ca_certificates.extend(pem_certificates(&text));
            }
            let created = partners
                .create_partner(pb::CreatePartnerRequest {
                    partner_id: id,
                    partner: Some(pb::Partner {
                        display_name,
                        kind: kind_of(kind) as i32,
                        roles: roles.into_iter().map(|r| role_of(r) as i32).collect(),
                        identities,
                        ca_certificates,
                        ..Default::default()
                    }),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            print(&created)?;
        }
        PartnersCommand::List => {
            let mut page_token = String::new();
            loop {
                let page = partners
                    .list_partners(pb::ListPartnersRequest {
                        page_size: 1000,
                        page_token: page_token.clone(),
                    })
                    .await
                    .map_err(call_error)?
                    .into_inner();
                for p in &page.partners {
                    print(p)?;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
        PartnersCommand::Suspend { id } | PartnersCommand::Activate { id }
            if !names::is_valid_id(&id) =>
        {
            bail!("{id:?} is not a partner id")
        }
        PartnersCommand::Suspend { id } => {
            print(&set_state(partners, &id, PartnerState::Suspended).await?)?;
        }
        PartnersCommand::Activate { id } => {
            print(&set_state(partners, &id, PartnerState::Active).await?)?;
        }
    }
    Ok(())
}

/// Each PEM certificate of a file, as its own text.
fn pem_certificates(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    text.split_inclusive(END)
        .filter(|block| block.contains(END))
        .map(|block| block.trim_start().to_owned())
        .collect()
}

async fn set_state(
    partners: &mut PartnerClient,
    id: &str,
    state: PartnerState,
) -> anyhow::Result<pb::Partner> {
    Ok(partners
        .update_partner(pb::UpdatePartnerRequest {
            partner: Some(pb::Partner {
                name: names::partner_name(id),
                state: state as i32,
                ..Default::default()
            }),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["state".into()],
            }),
        })
        .await
        .map_err(call_error)?
        .into_inner())
}

fn role_of(arg: RoleArg) -> Role {
    match arg {
        RoleArg::Reader => Role::Reader,
        RoleArg::Contributor => Role::Contributor,
        RoleArg::Admin => Role::Admin,
    }
}

fn kind_of(arg: KindArg) -> PartnerKind {
    match arg {
        KindArg::Ngo => PartnerKind::Ngo,
        KindArg::Industry => PartnerKind::Industry,
        KindArg::LawEnforcement => PartnerKind::LawEnforcement,
        KindArg::Intergovernmental => PartnerKind::Intergovernmental,
        KindArg::Government => PartnerKind::Government,
        KindArg::Academia => PartnerKind::Academia,
        KindArg::Other => PartnerKind::Other,
    }
}

fn partner_line(p: &pb::Partner) -> String {
    let roles: Vec<&str> = p
        .roles
        .iter()
        .filter_map(|r| Role::try_from(*r).ok())
        .map(|r| r.as_str_name().trim_start_matches("ROLE_"))
        .collect();
    let state = PartnerState::try_from(p.state)
        .map(|s| s.as_str_name().trim_start_matches("PARTNER_STATE_"))
        .unwrap_or("?");
    let kind = PartnerKind::try_from(p.kind)
        .map(|k| k.as_str_name().trim_start_matches("PARTNER_KIND_"))
        .unwrap_or("?");
    format!(
        "{:<24} {:<32} {:<18} {:<10} {}",
        p.name,
        names::truncate(&p.display_name, 30),
        kind,
        state,
        roles.join(",")
    )
}
