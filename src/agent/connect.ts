/** Connects the agent to its receiver through the transfer layer's Sender. */
import type { Logger } from 'pino';
import { Sender } from '../transfer/sender.ts';
import type { ReceiverSession } from '../transfer/contract.ts';

/** The part of a receiver session (transfer/contract.ts) an agent cycle uses. */
export type AgentSender = Pick<ReceiverSession, 'listImages' | 'blockDigests' | 'beginCycle' | 'close'>;

export interface AgentConnectOptions {
  /** host[:controlPort] */
  receiver: string;
  fingerprint: string;
  sourceId: string;
  /** Needed only until the source is registered (the credential is then kept at credentialPath). */
  code?: string | undefined;
  credentialPath: string;
  proxy?: string | undefined;
  proxyPassword?: string | undefined;
  compression: number;
  bandwidthMbps: number;
  checksum: boolean;
  logger?: Logger;
  /** How long a session keeps reconnecting on its own before it fails (default 10 min). */
  resumeTimeoutMs?: number;
  dataPort?: number;
  /** Unacknowledged payload the sender keeps for resend (default 64 MiB): bounds bytes sent twice. */
  windowBytes?: number;
}

export async function connectAgentSender(o: AgentConnectOptions): Promise<AgentSender> {
  return Sender.connect({
    receiver: o.receiver,
    fingerprint: o.fingerprint,
    sourceId: o.sourceId,
    sourceLabel: `agent ${o.sourceId}`,
    credentialFile: o.credentialPath,
    ...(o.code !== undefined ? { activationCode: o.code } : {}),
    ...(o.proxy !== undefined ? { proxy: o.proxy } : {}),
    ...(o.proxyPassword !== undefined ? { proxyPassword: o.proxyPassword } : {}),
    compression: o.compression,
    bandwidthMbps: o.bandwidthMbps,
    checksum: o.checksum,
    ...(o.logger ? { logger: o.logger } : {}),
    ...(o.resumeTimeoutMs !== undefined ? { resumeTimeoutMs: o.resumeTimeoutMs } : {}),
    ...(o.dataPort !== undefined ? { dataPort: o.dataPort } : {}),
    ...(o.windowBytes !== undefined ? { windowBytes: o.windowBytes } : {}),
  });
}
