# NixOS module for llmhost: a sandboxed systemd service, configured from Nix.
#
#   imports = [ ./deploy/nixos/module.nix ];
#   services.llmhost = {
#     enable = true;
#     package = pkgs.llmhost;            # a derivation with bin/llmhost (llmhost ships none in nixpkgs)
#     host = "0.0.0.0";
#     keysFile = "/run/secrets/llmhost.env";   # LLMHOST_API_KEY=...  (sops-nix, agenix, or by hand)
#     openFirewall = true;
#     extraSettings.engine.n_parallel = 8;
#   };
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.llmhost;
  settingsFormat = pkgs.formats.toml { };
  settingsFile = settingsFormat.generate "llmhost.toml" cfg.extraSettings;

  loopback = [
    "127.0.0.1"
    "::1"
    "localhost"
  ];
  isLoopback = lib.elem cfg.host loopback || lib.hasPrefix "127." cfg.host;

  # Settings that have an option of their own here, or that are secrets (the Nix store is world-readable).
  ownedSettings = [
    "host"
    "port"
    "data_dir"
    "models_dir"
    "api_key"
    "database_url"
  ];

  # The NVIDIA character devices a CUDA build of llama.cpp opens.
  cudaDevices = [
    "char-nvidiactl rw"
    "char-nvidia-caps rw"
    "char-nvidia-frontend rw"
    "char-nvidia-uvm rw"
  ];
in
{
  options.services.llmhost = {
    enable = lib.mkEnableOption "llmhost, a local LLM server with OpenAI, Anthropic and Ollama compatible APIs";

    package = lib.mkOption {
      type = lib.types.package;
      description = ''
        The llmhost package (its `bin/llmhost` is run). With `gpu = "cuda"` it must be a build whose
        llama-cpp-python was compiled with `CMAKE_ARGS=-DGGML_CUDA=on`.
      '';
      example = lib.literalExpression "pkgs.llmhost";
    };

    host = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      example = "0.0.0.0";
      description = ''
        Address the HTTP server binds to. A non-loopback address needs a key (`keysFile`): llmhost refuses
        to listen on one without.
      '';
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = 8080;
      description = "Port the HTTP server listens on.";
    };

    dataDir = lib.mkOption {
      type = lib.types.str;
      default = "/var/lib/llmhost";
      description = ''
        Databases (SQLite, unless `LLMHOST_DATABASE_URL` in `keysFile` names PostgreSQL) and the owner
        token. The default is the service's StateDirectory; another path must exist and be writable by the
        service's dynamic user (use `systemd.tmpfiles` or a static user).
      '';
    };

    modelsDir = lib.mkOption {
      type = lib.types.str;
      default = "${cfg.dataDir}/models";
      defaultText = lib.literalExpression ''"''${config.services.llmhost.dataDir}/models"'';
      description = "Model files (content-addressed GGUF blobs).";
    };

    keysFile = lib.mkOption {
      type = lib.types.nullOr (lib.types.strMatching "/.+");
      default = null;
      example = "/run/secrets/llmhost.env";
      description = ''
        An environment file outside the Nix store, read by systemd as root before the service starts:
        `LLMHOST_API_KEY=...` (one key with every scope), and optionally `LLMHOST_DATABASE_URL=postgresql://...`.
        More keys, with scopes and limits: `llmhost keys create`.
      '';
    };

    gpu = lib.mkOption {
      type = lib.types.nullOr (lib.types.enum [ "cuda" ]);
      default = null;
      description = ''
        `"cuda"`: let the service open the NVIDIA devices (the sandbox hides devices otherwise) and find
        the driver's libraries. The package must be a CUDA build.
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open `port` in the firewall.";
    };

    extraSettings = lib.mkOption {
      type = settingsFormat.type;
      default = { };
      example = lib.literalExpression ''
        {
          default_model = "gemma3:270m";
          engine.n_parallel = 8;
          limits.redis_url = "redis://127.0.0.1:6379/0";
          security.allowed_hosts = [ "llm.example.com" ];
        }
      '';
      description = ''
        llmhost.toml settings (see the README's Configuration section), written to the Nix store and read
        through `LLMHOST_CONFIG`. No secrets here: the store is world-readable; use `keysFile`.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = isLoopback || cfg.keysFile != null;
        message = ''
          services.llmhost.host = "${cfg.host}" is not a loopback address, and llmhost refuses to listen on
          one without an API key: set services.llmhost.keysFile (an environment file with LLMHOST_API_KEY=...).
        '';
      }
      {
        assertion = !(lib.any (name: cfg.extraSettings ? ${name}) ownedSettings);
        message = ''
          services.llmhost.extraSettings must not set ${lib.concatStringsSep ", " ownedSettings}: the
          first four have options of their own, and keys and database URLs belong in keysFile, not the
          world-readable Nix store.
        '';
      }
    ];

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ cfg.port ];

    systemd.services.llmhost = {
      description = "llmhost - local LLM server behind OpenAI, Anthropic and Ollama compatible APIs";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];

      environment = {
        LLMHOST_DATA_DIR = cfg.dataDir;
        LLMHOST_MODELS_DIR = cfg.modelsDir;
        HOME = cfg.dataDir;
      }
      // lib.optionalAttrs (cfg.extraSettings != { }) { LLMHOST_CONFIG = "${settingsFile}"; }
      // lib.optionalAttrs (cfg.gpu == "cuda") { LD_LIBRARY_PATH = "/run/opengl-driver/lib"; };

      serviceConfig = {
        Type = "exec";
        ExecStart = lib.escapeShellArgs [
          (lib.getExe' cfg.package "llmhost")
          "serve"
          "--host"
          cfg.host
          "--port"
          (toString cfg.port)
        ];
        EnvironmentFile = lib.optional (cfg.keysFile != null) cfg.keysFile;
        WorkingDirectory = cfg.dataDir;

        # llmhost drains for up to 30 s (drain_seconds) on SIGTERM; SIGKILL comes after that.
        KillSignal = "SIGTERM";
        KillMode = "mixed";
        TimeoutStopSec = 45;
        # The first start imports the embedded model (about 250 MB) before the server listens.
        TimeoutStartSec = 300;
        Restart = "on-failure";
        RestartSec = "5s";
        LimitNOFILE = 65536;

        DynamicUser = true;
        StateDirectory = "llmhost";
        StateDirectoryMode = "0750";
        # "-": a path that does not exist yet (models/ before the first start) is skipped, not an error.
        ReadWritePaths = map (path: "-${path}") (
          lib.unique [
            cfg.dataDir
            cfg.modelsDir
          ]
        );
        UMask = "0077";

        NoNewPrivileges = true;
        CapabilityBoundingSet = [ "" ];
        AmbientCapabilities = [ "" ];
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = cfg.gpu == null;
        DeviceAllow = lib.optionals (cfg.gpu == "cuda") cudaDevices;
        PrivateUsers = true;
        PrivateMounts = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        # llama.cpp has no JIT (checked under the kernel's PR_SET_MDWE by the repository's tests).
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}
