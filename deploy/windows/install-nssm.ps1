#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Installs (or removes) mcp-local-provider's two Windows services with NSSM.

.DESCRIPTION
    Creates MCPLocalProviderBridgeAgent (bridge-agent.exe) and MCPLocalProviderGateway
    (gateway.exe), both restarted whenever they exit (crash-only services; bridge-agent exits
    non-zero by design when the MCP bridge on :8787 stays unreachable), both running as
    NT AUTHORITY\LocalService, with stdout/stderr logs rotated by NSSM.

    REQUIREMENT: the two services talk over a Unix domain socket (AF_UNIX). Windows supports
    AF_UNIX from Windows 10 version 1803 (build 17134) and Windows Server 2019; older builds
    cannot run the pair. The binaries must be built for Windows with that socket support.

    Layout:
      <InstallDir>\bin\gateway.exe, bridge-agent.exe     the release binaries
      <DataDir>\api_key                                  the API key (created if missing;
                                                         readable by LocalService and admins)
      <DataDir>\env                                      optional KEY=VALUE lines, e.g.
                                                         LOCAL_PROVIDER_ADMIN_TOKEN=...
      <DataDir>\logs\                                    service logs + security_audit.log
      <DataDir>\run\bridge.sock                          the socket between the services

    nssm.exe must be on PATH or given with -Nssm.

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File deploy\windows\install-nssm.ps1 -InstallDir C:\mcp-local-provider

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File deploy\windows\install-nssm.ps1 -Uninstall
#>
[CmdletBinding()]
param(
    [string]$InstallDir = "C:\mcp-local-provider",
    [string]$DataDir = (Join-Path $env:ProgramData "mcp-local-provider"),
    [string]$Nssm = "nssm.exe",
    [string]$McpBridgeUrl = "ws://127.0.0.1:8787",
    [switch]$Uninstall
)

$ErrorActionPreference = "Stop"
Set-StrictMode -Version Latest

$BridgeService = "MCPLocalProviderBridgeAgent"
$GatewayService = "MCPLocalProviderGateway"
$ServiceAccount = "NT AUTHORITY\LocalService"

function Invoke-Nssm {
    # NSSM reports failures only through its exit code; stop at the first one.
    & $Nssm @args
    if ($LASTEXITCODE -ne 0) {
        throw "nssm $($args -join ' ') failed with exit code $LASTEXITCODE"
    }
}

function Test-Service([string]$Name) {
    return $null -ne (Get-Service -Name $Name -ErrorAction SilentlyContinue)
}

function Remove-ProviderService([string]$Name) {
    if (Test-Service $Name) {
        & $Nssm stop $Name | Out-Null   # may already be stopped; not an error
        Invoke-Nssm remove $Name confirm
        Write-Host "removed $Name"
    }
}

if (-not (Get-Command $Nssm -ErrorAction SilentlyContinue)) {
    throw "nssm.exe not found; put it on PATH or pass -Nssm C:\path\to\nssm.exe"
}

if ($Uninstall) {
    # Gateway first: it drains its streams while bridge-agent is still there to finish them.
    Remove-ProviderService $GatewayService
    Remove-ProviderService $BridgeService
    Write-Host "Services removed; $DataDir (key, logs) was left in place."
    return
}

$build = [System.Environment]::OSVersion.Version.Build
if ($build -lt 17134) {
    throw "Windows build $build has no AF_UNIX sockets; mcp-local-provider needs Windows 10 1803 (build 17134) or later."
}

$BinDir = Join-Path $InstallDir "bin"
$GatewayExe = Join-Path $BinDir "gateway.exe"
$BridgeExe = Join-Path $BinDir "bridge-agent.exe"
foreach ($exe in @($GatewayExe, $BridgeExe)) {
    if (-not (Test-Path -LiteralPath $exe -PathType Leaf)) {
        throw "$exe not found; copy target\release\gateway.exe and bridge-agent.exe to $BinDir first."
    }
}

$LogDir = Join-Path $DataDir "logs"
$RunDir = Join-Path $DataDir "run"
$KeyFile = Join-Path $DataDir "api_key"
$BridgeTokenFile = Join-Path $DataDir "bridge_token"
$EnvFile = Join-Path $DataDir "env"
$Socket = Join-Path $RunDir "bridge.sock"
foreach ($dir in @($DataDir, $LogDir, $RunDir)) {
    New-Item -ItemType Directory -Force -Path $dir | Out-Null
}
# The service account writes logs and the socket; nothing else under ProgramData.
foreach ($dir in @($LogDir, $RunDir)) {
    & icacls.exe $dir /grant "${ServiceAccount}:(OI)(CI)M" | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "icacls on $dir failed" }
}

# API key and bridge token (the bearer mcp-bridge requires of bridge-agent): created once, never
# printed. Only SYSTEM, Administrators and the service account may read them (the Windows
# counterpart of mode 0600).
foreach ($secretFile in @($KeyFile, $BridgeTokenFile)) {
    if (-not (Test-Path -LiteralPath $secretFile)) {
        $secret = (& $GatewayExe generate-api-key | Out-String).Trim()
        if ($LASTEXITCODE -ne 0 -or $secret.Length -lt 64) {
            throw "gateway.exe generate-api-key did not produce a secret of 64+ characters"
        }
        [System.IO.File]::WriteAllText($secretFile, $secret)
        Write-Host "created $secretFile (read it with: Get-Content '$secretFile')"
    }
    & icacls.exe $secretFile /inheritance:r /grant:r "SYSTEM:F" "Administrators:F" "${ServiceAccount}:R" | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "icacls on $secretFile failed" }
}

# Site settings from the optional env file (KEY=VALUE, # comments), added after the defaults
# below so that they win (NSSM applies AppEnvironmentExtra in order).
$siteEnv = @()
if (Test-Path -LiteralPath $EnvFile) {
    foreach ($line in Get-Content -LiteralPath $EnvFile) {
        $t = $line.Trim()
        if ($t -eq "" -or $t.StartsWith("#")) { continue }
        if ($t -notmatch '^LOCAL_PROVIDER_[A-Z0-9_]+=') {
            throw "${EnvFile}: expected LOCAL_PROVIDER_NAME=value, got: $t"
        }
        $siteEnv += $t
    }
}

$common = @(
    "LOCAL_PROVIDER_BRIDGE_SOCKET=$Socket",
    "LOCAL_PROVIDER_LOG_FORMAT=text"
)
$services = @(
    @{
        Name        = $BridgeService
        Exe         = $BridgeExe
        Display     = "MCP Local Provider bridge-agent"
        Description = "Owns the WebSocket to the MCP bridge (Cursor agent) for mcp-local-provider."
        Log         = "bridge-agent"
        Env         = $common + @(
            "LOCAL_PROVIDER_MCP_BRIDGE_URL=$McpBridgeUrl",
            "LOCAL_PROVIDER_MCP_BRIDGE_TOKEN_FILE=$BridgeTokenFile",
            "LOCAL_PROVIDER_BRIDGE_AGENT_HOST=127.0.0.1",
            "LOCAL_PROVIDER_BRIDGE_AGENT_PORT=8789"
        )
    },
    @{
        Name        = $GatewayService
        Exe         = $GatewayExe
        Display     = "MCP Local Provider gateway"
        Description = "OpenAI-compatible local model API for VoidEditor on http://127.0.0.1:8788/v1."
        Log         = "gateway"
        Env         = $common + @(
            "LOCAL_PROVIDER_HOST=127.0.0.1",
            "LOCAL_PROVIDER_PORT=8788",
            "LOCAL_PROVIDER_API_KEY_FILE=$KeyFile",
            "LOCAL_PROVIDER_AUDIT_LOG=$(Join-Path $LogDir 'security_audit.log')"
        )
    }
)

foreach ($svc in $services) {
    $name = $svc.Name
    if (Test-Service $name) {
        # Re-running the script updates the settings of an existing service in place.
        & $Nssm stop $name | Out-Null
    } else {
        Invoke-Nssm install $name $svc.Exe
    }
    Invoke-Nssm set $name Application $svc.Exe
    Invoke-Nssm set $name AppDirectory $InstallDir
    Invoke-Nssm set $name DisplayName $svc.Display
    Invoke-Nssm set $name Description $svc.Description
    Invoke-Nssm set $name Start SERVICE_AUTO_START
    # A built-in account: NSSM needs no password for it.
    Invoke-Nssm set $name ObjectName $ServiceAccount

    # Crash-only: restart on any exit, 5 s apart (NSSM's AppExit / AppRestartDelay in ms).
    Invoke-Nssm set $name AppExit Default Restart
    Invoke-Nssm set $name AppRestartDelay 5000
    Invoke-Nssm set $name AppThrottle 10000

    # Stop: Ctrl+C first (the services drain in-flight streams for LOCAL_PROVIDER_SHUTDOWN_GRACE,
    # 10 s), then give up after 15 s.
    Invoke-Nssm set $name AppStopMethodConsole 15000
    Invoke-Nssm set $name AppStopMethodWindow 2000
    Invoke-Nssm set $name AppStopMethodThreads 2000

    # Environment: defaults first, then the site's env file.
    $envArgs = @($svc.Env) + $siteEnv
    Invoke-Nssm set $name AppEnvironmentExtra @envArgs

    # Logs: stdout and stderr to files, rotated daily or at 10 MiB, also while running.
    Invoke-Nssm set $name AppStdout (Join-Path $LogDir "$($svc.Log).log")
    Invoke-Nssm set $name AppStderr (Join-Path $LogDir "$($svc.Log).error.log")
    Invoke-Nssm set $name AppRotateFiles 1
    Invoke-Nssm set $name AppRotateOnline 1
    Invoke-Nssm set $name AppRotateSeconds 86400
    Invoke-Nssm set $name AppRotateBytes 10485760
}

# bridge-agent first: it creates the socket the gateway connects to. (No service dependency:
# the gateway must keep running, degraded, while bridge-agent restarts.)
Invoke-Nssm start $BridgeService
Invoke-Nssm start $GatewayService

Write-Host ""
Write-Host "mcp-local-provider is running."
Write-Host "  Base URL : http://127.0.0.1:8788/v1   (model: cursor-agent-local)"
Write-Host "  Health   : http://127.0.0.1:8788/health"
Write-Host "  API key  : Get-Content '$KeyFile'"
Write-Host "  Bridge token (give mcp-bridge the same: LOCAL_PROVIDER_MCP_BRIDGE_TOKEN_FILE): $BridgeTokenFile"
Write-Host "  Logs     : $LogDir"
