import { join } from 'node:path';
import { PROJECT_ROOT } from '../util/root.ts';
import * as soap from 'soap';
import { request, type Agent } from 'undici';
import { UserError, errorMessage } from '../util/errors.ts';
import { silentLogger, type Logger } from '../util/log.ts';
import { fetchThumbprints, makeDispatcher, type TrustMode } from './tls.ts';
import { deadlineError, readBody, soapLimits, UndiciSoapHttp, type SoapLimits, type TransportStats } from './http.ts';
import { badResponse, isUnavailableStatus, parseFault, unavailable, unreachable, VimFault } from './errors.ts';
import { mor, moref, str, type MoRef } from './convert.ts';
import { soapRequest } from './lean-xml.ts';
import { chooseApiVersion, MIN_API_VERSION, parseServiceVersions, serviceVersionsUrl } from './api-version.ts';

const WSDL = join(PROJECT_ROOT, 'src', 'vsphere', 'wsdl', 'vim25-trimmed.wsdl');

export interface ConnectOptions {
  /** https://HOST/sdk, https://HOST or HOST. */
  server: string;
  user: string;
  password: string;
  trust: TrustMode;
  timeoutMs?: number;
  /** Caps on one answer (size, whole-call deadline, nesting); defaults in http.ts. */
  limits?: Partial<SoapLimits>;
  logger?: Logger;
}

export interface ServiceContent {
  rootFolder: MoRef;
  propertyCollector: MoRef;
  viewManager: MoRef;
  sessionManager: MoRef;
  about: { fullName: string; version: string; build: string; apiType: string; apiVersion: string; instanceUuid?: string };
}

export function sdkUrl(server: string): string {
  const s = server.trim();
  const u = new URL(/^[a-z]+:\/\//i.test(s) ? s : `https://${s}`);
  if (u.protocol !== 'https:') {
    throw new UserError('VC_SERVER_URL', `vCenter URL ${server} is not https`, 'use https://HOST/sdk');
  }
  if (u.pathname === '/' || u.pathname === '') u.pathname = '/sdk';
  u.search = ''; u.hash = ''; u.username = ''; u.password = '';
  return u.toString();
}

/**
 * The SOAP layer: node-soap over a project-authored trimmed vim25 WSDL, undici as HTTP client
 * with the pinned-TLS connector, the server's API version in every SOAPAction, the session cookie,
 * and one transparent re-login when vCenter says NotAuthenticated (expired or terminated session).
 */
export class VimSession {
  readonly url: string;
  readonly user: string;
  readonly trust: TrustMode;
  readonly dispatcher: Agent;
  readonly log: Logger;
  content!: ServiceContent;
  /** The vim25 version this session speaks (the server's, capped at what vmlift's WSDL knows). */
  apiVersion = MIN_API_VERSION;
  relogins = 0;
  private readonly timeoutMs: number;
  private readonly http: UndiciSoapHttp;
  private client!: soap.Client;
  private readonly password: string;

  private constructor(opts: ConnectOptions) {
    this.url = sdkUrl(opts.server);
    this.user = opts.user;
    this.password = opts.password;
    this.trust = opts.trust;
    this.log = opts.logger ?? silentLogger;
    const timeout = opts.timeoutMs ?? 60_000;
    this.timeoutMs = timeout;
    this.dispatcher = makeDispatcher(opts.trust, timeout);
    this.http = new UndiciSoapHttp(this.dispatcher, timeout, soapLimits(timeout, opts.limits));
  }

  static async connect(opts: ConnectOptions): Promise<VimSession> {
    const s = new VimSession(opts);
    // node-soap caches the parsed WSDL per path; each session gets its own client over it.
    s.client = await soap.createClientAsync(WSDL, { httpClient: s.http as unknown as soap.IHttpClient, endpoint: s.url });
    let listed: string | null;
    let sc;
    try {
      listed = await s.listedApiVersion();
      s.speak(listed ? chooseApiVersion(listed, s.url) : MIN_API_VERSION);
      sc = await s.invoke('RetrieveServiceContent', { _this: mor('ServiceInstance', 'ServiceInstance') });
    } catch (e) {
      await s.dispatcher.close().catch(() => {});
      if (e instanceof UserError) throw e;
      throw new UserError('VC_NOT_VCENTER', `${s.url} did not answer as a vSphere SDK endpoint (${errorMessage(e)})`,
        'check --server: it must be the vCenter (or ESXi) SDK URL, https://HOST/sdk', { cause: e });
    }
    const rv = sc.returnval;
    s.content = {
      rootFolder: moref(rv.rootFolder)!, propertyCollector: moref(rv.propertyCollector)!,
      viewManager: moref(rv.viewManager)!, sessionManager: moref(rv.sessionManager)!,
      about: { fullName: str(rv.about?.fullName) ?? '', version: str(rv.about?.version) ?? '', build: str(rv.about?.build) ?? '',
        apiType: str(rv.about?.apiType) ?? '', apiVersion: str(rv.about?.apiVersion) ?? '', instanceUuid: str(rv.about?.instanceUuid) },
    };
    if (!listed) {
      try {
        s.speak(chooseApiVersion(s.content.about.apiVersion || MIN_API_VERSION, s.url));
      } catch (e) {
        await s.dispatcher.close().catch(() => {});
        throw e;
      }
    }
    await s.login();
    return s;
  }

  /**
   * The current urn:vim25 version from /sdk/vimServiceVersions.xml, or null when the server has no
   * readable listing (the caller then falls back to about.apiVersion). Connection errors are the
   * same clear errors a SOAP call gives.
   */
  private async listedApiVersion(): Promise<string | null> {
    const limits = this.http.limits;
    const host = new URL(this.url).host;
    let res, text;
    try {
      res = await request(serviceVersionsUrl(this.url), { method: 'GET', dispatcher: this.dispatcher, signal: AbortSignal.timeout(limits.deadlineMs) });
      text = await readBody(res, host, limits);
    } catch (e) {
      const te = await this.transportError(deadlineError(e, host, limits));
      if (te) throw te;
      return null;
    }
    return res.statusCode === 200 ? parseServiceVersions(text) : null;
  }

  private speak(version: string): void {
    this.apiVersion = version;
    this.client.setSOAPAction(`urn:vim25/${version}`);
  }

  get stats(): TransportStats { return this.http.stats; }
  /** A standalone ESXi host's hostd (about.apiType "HostAgent") rather than a vCenter ("VirtualCenter"). */
  get isHostAgent(): boolean { return this.content.about.apiType === 'HostAgent'; }
  /** What the server is, for messages. */
  get serverLabel(): string { return this.isHostAgent ? 'ESXi host' : 'vCenter'; }
  /** The session cookie ("vmware_soap_session=…") for datastore HTTP access. Never log it. */
  get cookie(): string | undefined { return this.http.cookie; }

  /** Logs in again now: for datastore HTTP readers whose cookie got a 401 after the session expired. Returns the new cookie. */
  async relogin(): Promise<string | undefined> {
    this.relogins++;
    await this.login();
    return this.cookie;
  }

  private async login(): Promise<void> {
    this.http.cookie = undefined;
    try {
      await this.invoke('Login', { _this: mor('SessionManager', this.content.sessionManager.value), userName: this.user, password: this.password });
    } catch (e) {
      if (e instanceof VimFault && e.type === 'InvalidLogin') {
        throw new UserError('VC_LOGIN', `${this.serverLabel} ${this.url} rejected the user name or password for ${this.user}`,
          'check --user and the password (--password-file, VMLIFT_PASSWORD_FILE or VMLIFT_PASSWORD)', { cause: e });
      }
      throw e;
    }
    this.log.debug({ url: this.url, user: this.user, apiType: this.content.about.apiType }, `logged in to the ${this.serverLabel}`);
  }

  /** Calls a vim25 method; re-logs in once and retries when the session has expired. */
  async call(method: string, args: Record<string, unknown>): Promise<any> {
    try {
      return await this.invoke(method, args);
    } catch (e) {
      if (e instanceof VimFault && e.type === 'NotAuthenticated' && method !== 'Login') {
        this.log.info({ method }, 'vCenter session expired; logging in again');
        this.relogins++;
        await this.login();
        return this.invoke(method, args);
      }
      throw e;
    }
  }

  /**
   * Calls a vim25 method outside node-soap and returns the answer's XML text, for answers too large
   * for node-soap's parser (read them with lean-xml.ts). Same faults, errors and re-login as call().
   */
  async callText(method: string, args: Record<string, unknown>): Promise<string> {
    try {
      return await this.invokeText(method, args);
    } catch (e) {
      if (e instanceof VimFault && e.type === 'NotAuthenticated') {
        this.log.info({ method }, 'vCenter session expired; logging in again');
        this.relogins++;
        await this.login();
        return this.invokeText(method, args);
      }
      throw e;
    }
  }

  private async invokeText(method: string, args: Record<string, unknown>): Promise<string> {
    let res;
    try {
      res = await this.http.post(this.url, soapRequest(method, args), { SOAPAction: `"urn:vim25/${this.apiVersion}"` });
    } catch (e) {
      const te = await this.transportError(e);
      if (te) throw te;
      throw new Error(`vCenter call ${method} failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    if (res.status === 200) return res.data;
    const f = parseFault(res.data, method);
    if (f) throw f;
    if (isUnavailableStatus(res.status)) throw unavailable(new URL(this.url).host, method, res.status);
    throw new Error(`vCenter call ${method} failed: HTTP ${res.status}`);
  }

  private async invoke(method: string, args: Record<string, unknown>): Promise<any> {
    const fn = (this.client as unknown as Record<string, (a: unknown) => Promise<any[]>>)[`${method}Async`];
    if (!fn) throw new Error(`vim25 method ${method} is not in vmlift's WSDL`);
    try {
      const [result] = await fn.call(this.client, args);
      return result ?? {};
    } catch (e) {
      const body: unknown = (e as { body?: unknown }).body ?? (e as { response?: { data?: unknown } }).response?.data;
      if (typeof body === 'string') {
        const f = parseFault(body, method);
        if (f) throw f;
      }
      const te = await this.transportError(e);
      if (te) throw te;
      const status = (e as { response?: { status?: number } }).response?.status;
      if (status && isUnavailableStatus(status)) throw unavailable(new URL(this.url).host, method, status, e);
      if (status === 200) {
        // node-soap's parser refused a 200 answer (malformed XML, an undefined entity)
        throw badResponse(new URL(this.url).host, `${method}: the answer is not well-formed SOAP (${errorMessage(e).slice(0, 200)})`, e);
      }
      const why = status ? `HTTP ${status}` : e instanceof Error ? e.message : 'unreadable answer';
      throw new Error(`vCenter call ${method} failed: ${why}`, { cause: e });
    }
  }

  /** The clear error for a failed connection (pinning, untrusted certificate, unreachable), or null for other failures. */
  private async transportError(e: unknown): Promise<UserError | null> {
    if (e instanceof UserError) return e;
    const inner = (e as { cause?: unknown }).cause;
    if (inner instanceof UserError) return inner;
    const code = (e as { code?: string }).code ?? ((e as { cause?: { code?: string } }).cause?.code);
    if (code && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS/.test(code)) {
      const u = new URL(this.url);
      const tp = await fetchThumbprints(u.hostname, Number(u.port || 443)).then((t) => t.sha256, () => undefined);
      return new UserError('VC_TLS_UNTRUSTED', `the certificate of ${u.host} is not trusted by the system CAs (${code})`,
        `pin it: --thumbprint ${tp ?? 'SHA256-OF-THE-CERTIFICATE'} (check this value against the vCenter appliance first)`, { cause: e });
    }
    if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
      return new UserError('VC_TIMEOUT', `${new URL(this.url).host} went silent for ${this.timeoutMs} ms in the middle of a call (${code})`,
        'check the vCenter load and the network path; retry', { cause: e, transient: true });
    }
    if (code && /^(ECONN|ENOTFOUND|ETIMEDOUT|EHOSTUNREACH|UND_ERR_CONNECT|UND_ERR_SOCKET|ECONNRESET)/.test(code)) {
      return unreachable(this.url, e);
    }
    return null;
  }

  async logout(): Promise<void> {
    try {
      await this.invoke('Logout', { _this: mor('SessionManager', this.content.sessionManager.value) });
    } catch { /* the session may already be gone */ }
  }

  async close(): Promise<void> {
    await this.logout();
    await this.dispatcher.close().catch(() => {});
  }
}
