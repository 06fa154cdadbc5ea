/**
 * `GET /v1/receivers` of the connector API (and `vmlift connector receivers`, the console's overview):
 * each receiver the connector knows, asked for its space and store figures (the receiver's
 * `GET /v1/store`), or the error that stopped the asking (RECEIVER_UNREACHABLE with its fix, or the
 * receiver's own refusal). The receivers are asked at once; one that does not answer costs at most
 * the connect timeout and never hides the others.
 *
 * The connector asks as its own source, `vmlift-connector` (registered with the activation code on
 * first use, like a job's source): the figures are store-wide, not a job's.
 */
import { join } from 'node:path';
import type { Logger } from '../util/log.ts';
import { errorReport, type ErrorReport } from '../util/errors.ts';
import { Sender } from '../transfer/sender.ts';
import type { StoreFiguresResponse } from '../transfer/contract.ts';
import type { LinkTimeouts } from '../transfer/link-timeouts.ts';

export const FIGURES_SOURCE_ID = 'vmlift-connector';
/** A console poll waits this long at most for a receiver that does not answer. */
export const FIGURES_TIMEOUTS: Partial<LinkTimeouts> = { connectMs: 5_000, requestMs: 20_000 };

export interface KnownReceiver {
  /** host[:controlPort] */
  address: string;
  fingerprint: string;
  /** Folder of the connector's source credentials (`<home>/credentials`). */
  credentialsDir: string;
  activationCode?: string | undefined;
  proxy?: string | undefined;
  proxyPassword?: string | undefined;
  acceptPin?: ((presented: string) => string) | undefined;
  timeouts?: Partial<LinkTimeouts> | undefined;
}

export type ReceiverFigures =
  | { address: string; reachable: true; figures: StoreFiguresResponse }
  | { address: string; reachable: false; error: ErrorReport };

export interface ReceiverFiguresResponse { receivers: ReceiverFigures[] }

export async function askReceiver(r: KnownReceiver, logger?: Logger): Promise<ReceiverFigures> {
  let sender: Sender | undefined;
  try {
    sender = await Sender.connect({
      receiver: r.address, fingerprint: r.fingerprint, credentialFile: join(r.credentialsDir, `${FIGURES_SOURCE_ID}.json`),
      activationCode: r.activationCode, sourceId: FIGURES_SOURCE_ID, sourceLabel: 'connector (store figures)',
      proxy: r.proxy, proxyPassword: r.proxyPassword, acceptPin: r.acceptPin, timeouts: { ...FIGURES_TIMEOUTS, ...r.timeouts },
      compression: 0, bandwidthMbps: 0, checksum: false, ...(logger ? { logger } : {}),
    });
    return { address: r.address, reachable: true, figures: await sender.control.storeFigures() };
  } catch (e) {
    const error = errorReport(e);
    logger?.warn({ receiver: r.address, errCode: error.code, err: error.message }, 'receiver figures: the receiver did not answer');
    return { address: r.address, reachable: false, error };
  } finally {
    await sender?.close().catch(() => undefined);
  }
}

export async function askReceivers(list: readonly KnownReceiver[], logger?: Logger): Promise<ReceiverFiguresResponse> {
  return { receivers: await Promise.all(list.map((r) => askReceiver(r, logger))) };
}
