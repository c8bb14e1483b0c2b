from twisted.application.service import ServiceMaker

wecompany = ServiceMaker("WeCompany", "wecompany.tap", "WeCompany chat and call server (binary TCP, HTTP)", "wecompany")
